//! The broker tried as an attacker would: one module per class of attack, each test asserting
//! the refusal, that the legitimate traffic still gets through, that other clients are
//! unaffected and, where memory is at stake, the bound (a broker counter, or the process's
//! memory read from /proc).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bounds;
mod delivery;
mod limits;
#[path = "../support/raw.rs"]
mod raw;
mod routing;
