//! stencil-relay: Stencil `image.created` webhooks in, Make (Integromat) instant triggers out —
//! verified, committed durably before the answer, and fanned out to exactly the hooks of the
//! connection the event belongs to.
//!
//! # Layout
//!
//! - [`config`]: settings from flags and `RELAY_*` variables, validated.
//! - [`app`]: builds an instance (store, registry, listener) and runs it until shutdown.
//! - [`http`]: the server and the route table; thin handlers for ingest, hooks and admin.
//! - [`delivery`]: workers that claim due deliveries, pace them per hook, send and record them.
//! - [`registry`]: the in-memory index of connections and hooks (no database reads on hot paths).
//! - [`store`]: durable state behind one interface (embedded SQLite, or PostgreSQL for several
//!   instances).
//! - [`retention`], [`event_counts`]: background upkeep of the store (pruning old history,
//!   adding the hourly event counts).
//! - [`signature`], [`target`], [`ratelimit`], [`rejections`], [`model`]: pure building blocks.
//!
//! Dependency rule: `cli → app → {http, delivery, registry, store, …}`; nothing imports `app`,
//! `cli` or `http`; `store` and the pure modules import only `model` (and `config` for URLs).

pub mod app;
pub mod cli;
pub mod config;
#[cfg(test)]
mod corpus;
pub mod delivery;
pub mod event_counts;
pub mod http;
pub mod metrics;
pub mod model;
pub mod ratelimit;
pub mod registry;
pub mod rejections;
pub mod retention;
pub mod shutdown;
pub mod signature;
pub mod store;
pub mod sync;
pub mod target;
pub mod telemetry;
