//! Job lifecycle: the pure state machine and its backoff delays (SPEC §4).

pub mod backoff;
pub mod machine;

pub use machine::{Effect, Exit, Input, Job, Policy, State, TimerKind};
