//! Federation: peer links between nodes and interest propagation over them.
//!
//! The federation actor ([`actor`], a child of the node supervisor) owns the
//! interest table and the set of dialled peers; it supervises one link actor
//! per peer link ([`crate::link`]). Control flows through it: local interest
//! changes (from the subscription-table actor), link up/down, announcements
//! from peers. Data does not: a publish for remote subscribers is pushed by
//! the routing task straight into the link's bounded outbox, found through the
//! same registry lookup as local subscribers ([`crate::registry::RemoteGroup`]).
//! What the links and the routing path share with it lives in [`shared`].

pub(crate) mod actor;
pub(crate) mod shared;
