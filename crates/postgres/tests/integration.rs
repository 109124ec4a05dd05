//! choreo-postgres on a real PostgreSQL: a throwaway cluster per test
//! (`choreo_testkit::postgres`), one test binary with a module per topic.

mod integration {
    pub mod common;
    mod conformance;
    mod failure;
    mod inbox;
    mod outbox;
    mod relay;
    mod schema;
}
