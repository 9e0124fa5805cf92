//! autoresearch-coordinator: runs autoresearch campaigns on paid ERC-8004 GPU workers over x402.
//!
//! The loop, and where each step lives:
//! - THINK: `strategy` proposes the next experiments;
//! - CLAIM: `discovery` finds workers; `engine` picks one per experiment (cheapest free worker);
//! - RUN: `payment` signs an ERC-3009 voucher through the remote signer and pays the worker's
//!   x402 gate; `engine::run` is the task that does it for one experiment;
//! - PUBLISH: `results` appends to results.jsonl; `ledger` updates campaign status.
//!
//! `engine` drives one campaign through those steps for both the controller (`controller`,
//! status in the API server) and the `loop` command (status in memory). `crd` is the custom
//! resource; `cli` exposes each step by hand. The protocol modules know nothing of Kubernetes.

pub mod chain;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod discovery;
pub mod endpoint;
pub mod engine;
pub mod experiment;
pub mod failpoint;
pub mod http;
pub mod ledger;
pub mod payment;
pub mod report;
pub mod results;
pub mod scripts;
pub mod strategy;
pub mod telemetry;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod usdc;
