//! The only code that speaks Redis: every key name ([`keys`]), the Lua
//! scripts (one verb each), the typed job and build record, the queue,
//! membership, live-log streams and the connection itself.

pub mod conn;
pub mod cron;
pub(crate) mod durability;
pub mod job;
pub mod keys;
pub mod membership;
pub mod passes;
pub mod queue;
pub(crate) mod record;
mod scripts;
pub(crate) mod signed;
pub(crate) mod stats;
pub(crate) mod stream;
#[cfg(test)]
mod test_redis;
