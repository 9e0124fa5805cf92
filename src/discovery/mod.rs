//! CLAIM, part one: finding GPU workers that advertise the autoresearch skill.
//!
//! Sources: the 8004scan index ([`scan`]), the ERC-8004 Identity Registry read through eRPC
//! ([`chain`]), and workers named in the campaign. Registration documents are resolved by
//! [`fetch`] and parsed by [`document`]; every discovered URL goes through the address
//! [`policy`]. [`service::Discovery`] ties them together behind a cache that every campaign of
//! the process shares.

pub mod cache;
pub mod chain;
pub mod document;
pub mod fetch;
pub mod http;
pub mod policy;
pub mod scan;
pub mod service;
pub mod worker;

pub use document::{Registration, SkillFilter, parse_registration};
pub use policy::{AddressClass, AddressPolicy, PinnedResolver, UrlRefusal};
pub use service::{Discovery, DiscoveryError, DiscoverySettings, Rejected, WorkerSet};
pub use worker::{FoundIn, NotAWorker, Worker, merge, rank_by_published_bpb};
