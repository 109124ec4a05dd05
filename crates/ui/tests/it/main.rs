//! choreo-ui's integration tests: one binary, a module per topic.

mod api;
mod browser;
mod fixture;
mod simulated_run;
mod webdriver;
