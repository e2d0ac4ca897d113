//! The slave: claims an index, runs executors that take jobs, builds them in
//! cached checkouts under watch, stores results and posts commit statuses.
//!
//! - [`run`]: claim an index, start the threads, keep the index, shut down.
//! - `executor`: one executor's loop (take or steal, start, build, store, forge).
//! - `state`: what the loop, the executors and the threads share.
//! - `lease`: the heartbeat (renewal) and the guards' beats;
//!   `reroute`: jobs of vanished indexes; `cancel_watch`: kills canceled builds.
//! - [`build`]: one build (workspace, integration.yml, runner, log), no Redis.
//! - `proc`: child processes in their own groups, under a guard.
//! - [`build_user`], [`credentials`], `forge`: who builds, git's secrets, commit statuses.
//! - [`repo_secrets`]: the secrets per repository (SLAVE_SECRETS_FILE) and which step gets which.
//! - [`trust`]: the certificate authorities its own https clients trust (SLAVE_CA_FILE).
//! - `error`: why the slave cannot start.

pub(crate) mod backend;
pub mod build;
pub(crate) mod build_groups;
pub mod build_user;
pub(crate) mod cancel_watch;
pub mod credentials;
pub mod engine;
pub(crate) mod error;
pub(crate) mod executor;
pub(crate) mod forge;
pub(crate) mod lease;
pub(crate) mod proc;
pub mod repo_secrets;
pub(crate) mod reroute;
pub mod run;
pub(crate) mod state;
pub mod trust;
