//! The slave: claims an index, runs executors that take jobs, builds them in
//! cached checkouts under watch, stores results and posts commit statuses.

pub mod build;
pub mod build_user;
pub mod credentials;
pub mod engine;
pub mod forge;
pub mod lease;
pub mod proc;
pub mod run;
