//! Child processes under watch: one process group per child, a guard that
//! kills it when the slave can no longer vouch for it.

pub mod guard;
pub mod process;
pub(crate) mod reaper;
