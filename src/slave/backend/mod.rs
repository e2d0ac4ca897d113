//! Where a step's snippets run: [`bare`] on the slave as the build user, or
//! [`container`] in a container of the step's `image:`. Both take one
//! snippet, an environment, a time limit and the stop flag, and give back
//! the same [`Ran`]: its exit, its time and its output's bounded tail (each
//! line also handed to a sink as it is printed).

pub(crate) mod bare;
pub(crate) mod container;
pub(crate) mod naming;
pub(crate) mod retire;
pub(crate) mod warm;

use crate::slave::proc::process::{Exit, Tail};
use std::time::Duration;

/// Bytes of a snippet's output kept (the tail), newlines included.
pub const OUTPUT_TAIL: usize = 256 * 1024;

/// How a snippet ran.
pub struct Ran {
    pub exit: Exit,
    pub elapsed: Duration,
    pub output: Tail,
}
