//! The integration tests of the `choreo` facade, one binary with a module
//! per topic: the README's service, built as a new user would build it
//! (`readme`), everything the facade's signatures mention reachable through
//! it (`reachable`), and `choreo::testing::conforms` (`conforms`, with the
//! `testing` feature).

mod cargo;

#[cfg(feature = "testing")]
mod conforms;
mod reachable;
mod readme;
