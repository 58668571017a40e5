//! End-to-end tests: the real `postledger` binary, real sled files, HTTP over loopback.
mod cli;
mod golden;
mod graphql;
mod schema;
mod support;
