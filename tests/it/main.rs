//! One integration-test binary: real servers on loopback ports, real SQLite files in temp dirs,
//! real HTTP sinks standing in for Make.

mod harness;

mod admin;
mod backup;
mod cli;
mod cluster;
mod contract;
mod crash;
mod dashboard;
mod delivery;
mod deploy;
mod hardening;
mod health;
mod hooks;
mod inbound;
mod ingest;
mod integrations;
mod isolation;
mod ops;
mod outbound;
mod postgres;
mod restart;
mod retention;
mod stencil;
mod store;
