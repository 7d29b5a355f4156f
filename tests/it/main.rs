//! One integration-test binary (ripgrep style): every test drives the real
//! `corral` binary against real processes and, for the budget, a real PostgreSQL.

mod harness;
mod pg;
mod pgbouncer;

mod alerts;
mod browser;
mod budget;
mod config_errors;
mod control;
mod core;
mod dashboard;
mod docker;
mod dropin;
mod fleet;
mod handover;
mod integration;
mod pid1;
mod poolers;
mod python_examples;
mod reload;
mod schedule;
mod tls;
mod top;
mod watchdog;
