//! The engine's end-to-end tests, in one test binary: each module drives the real
//! `integration-engine` binary (SQLite files in temp dirs; where a test needs them, a real
//! Kafka-protocol broker and local stand-ins speaking vendors' wire formats). One binary links
//! once and its modules share their helpers as ordinary modules.
//!
//! Run one module with `cargo test --test e2e MODULE::` (e.g. `cargo test --test e2e kafka_bus::`).

mod bus_support;
mod credentials_support;
mod runs_helpers;
mod support;

mod audit;
mod cli;
mod config;
mod credentials;
mod http_contract;
mod idempotency_expiry;
mod kafka_bus;
mod observability;
mod readiness;
mod rebuild;
mod replay;
mod robustness;
mod roles;
mod runs;
mod schemas;
mod secret_leak;
mod slow_clients;
mod spec_examples;
mod spec_lifecycle;
mod tls;
mod webhook_fanout;
mod webhook_gateway;
