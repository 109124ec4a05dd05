//! choreo-trace's integration tests: one binary, a module per topic (linking
//! one test binary instead of eight is most of the time a 2-core CI saves).

mod capture_damage;
mod conformance;
mod corpus;
mod decoding;
mod export;
mod helpers;
mod judgement;
mod live;
mod memory;
mod metrics;
mod outbox;
mod poison;
mod recent;
mod reconstruction;
mod recording;
mod restore;
mod stuck;
