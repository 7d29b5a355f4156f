//! What glibc's NSS would answer, without NSS: users and groups from `/etc/passwd` and
//! `/etc/group` ([`users`]), host names from `/etc/hosts` and DNS ([`hosts`]), and that
//! resolution applied to corral's own PostgreSQL connections ([`postgres`]).
//!
//! corral is one static binary that must work in any image, `FROM scratch` and empty chroots
//! included (SPEC §9): no lookup may depend on shared libraries being present.

pub mod hosts;
pub mod postgres;
pub mod users;
