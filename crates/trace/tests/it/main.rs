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
mod metrics;
mod poison;
mod reconstruction;
mod stuck;
