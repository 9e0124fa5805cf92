//! autoresearch-coordinator: runs autoresearch campaigns on paid ERC-8004 GPU workers over x402.
//!
//! The loop, and where each step lives:
//! - THINK: `strategy` proposes the next experiments;
//! - CLAIM: `discovery` finds workers, `scheduler` picks one per experiment;
//! - RUN: `payment` signs an ERC-3009 voucher through the remote signer and pays the worker's
//!   x402 gate;
//! - PUBLISH: `results` appends to results.jsonl; the controller writes campaign status.
//!
//! `crd` is the custom resource; `controller` reconciles it; `cli` exposes the same steps by hand.
//! The protocol modules know nothing of Kubernetes, so the CLI and the controller share them.

pub mod cli;
pub mod crd;
pub mod discovery;
pub mod experiment;
pub mod results;
pub mod usdc;
