//! EIP-712 typed data for ERC-3009 `TransferWithAuthorization`, the voucher an x402 `exact`
//! payment on EVM carries (docs/protocols.md §4).
//!
//! Two representations of the same message are built here and must agree:
//! - the 32-byte signing hash, computed locally with alloy, used to recover and check the
//!   signature the remote signer returns;
//! - the JSON typed-data object the remote signer hashes and signs.
//!
//! A test asserts they agree, so a signer that hashes what we send signs what we check.

use alloy::primitives::{Address, B256, U256, address};
// `alloy::sol!` (not `alloy::sol_types::sol!`) points the generated code at the `alloy` facade.
use alloy::sol;
use alloy::sol_types::{Eip712Domain, SolStruct, eip712_domain};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

sol! {
    /// ERC-3009 `TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)`.
    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

/// A USDC deployment whose EIP-712 domain we know for certain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownUsdc {
    /// EVM chain id.
    pub chain_id: u64,
    /// Token contract.
    pub address: Address,
    /// EIP-712 domain name: it differs between chains ("USD Coin" vs "USDC"), and a wrong name
    /// yields a signature that looks valid but that the token contract rejects.
    pub name: &'static str,
    /// EIP-712 domain version.
    pub version: &'static str,
}

/// Circle's USDC on the chains the coordinator knows (docs/protocols.md §4).
pub const KNOWN_USDC: [KnownUsdc; 3] = [
    KnownUsdc {
        chain_id: 8453,
        address: address!("0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"),
        name: "USD Coin",
        version: "2",
    },
    KnownUsdc {
        chain_id: 84532,
        address: address!("0x036CbD53842c5426634e7929541eC2318f3dCF7e"),
        name: "USDC",
        version: "2",
    },
    KnownUsdc {
        chain_id: 1,
        address: address!("0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"),
        name: "USD Coin",
        version: "2",
    },
];

/// The known USDC deployment at `asset` on `chain_id`, if any.
pub fn known_usdc(chain_id: u64, asset: Address) -> Option<KnownUsdc> {
    KNOWN_USDC
        .into_iter()
        .find(|u| u.chain_id == chain_id && u.address == asset)
}

/// The known USDC deployment on `chain_id`, if any.
pub fn usdc_on(chain_id: u64) -> Option<KnownUsdc> {
    KNOWN_USDC.into_iter().find(|u| u.chain_id == chain_id)
}

/// The EIP-712 domain of a token contract.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenDomain {
    /// Domain `name`.
    pub name: String,
    /// Domain `version`.
    pub version: String,
    /// Domain `chainId`.
    pub chain_id: u64,
    /// Domain `verifyingContract`: always the token being transferred.
    pub verifying_contract: Address,
}

impl TokenDomain {
    /// The alloy domain, for hashing.
    pub fn to_alloy(&self) -> Eip712Domain {
        eip712_domain! {
            name: self.name.clone(),
            version: self.version.clone(),
            chain_id: self.chain_id,
            verifying_contract: self.verifying_contract,
        }
    }

    /// The domain separator.
    pub fn separator(&self) -> B256 {
        self.to_alloy().separator()
    }
}

/// The fields of one ERC-3009 authorization, as the voucher carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Authorization {
    /// Payer.
    pub from: Address,
    /// Payee (`payTo`).
    pub to: Address,
    /// Atomic token units.
    pub value: U256,
    /// Unix seconds; the transfer is invalid at or before this time.
    pub valid_after: u64,
    /// Unix seconds; the transfer is invalid at or after this time.
    pub valid_before: u64,
    /// Random 32 bytes; the token contract settles each nonce at most once.
    pub nonce: B256,
}

impl Authorization {
    fn to_sol(self) -> TransferWithAuthorization {
        TransferWithAuthorization {
            from: self.from,
            to: self.to,
            value: self.value,
            validAfter: U256::from(self.valid_after),
            validBefore: U256::from(self.valid_before),
            nonce: self.nonce,
        }
    }

    /// The EIP-712 digest a signature over this authorization must recover from.
    pub fn signing_hash(&self, domain: &TokenDomain) -> B256 {
        self.to_sol().eip712_signing_hash(&domain.to_alloy())
    }

    /// The standard EIP-712 JSON object for a remote signer (docs/protocols.md §5).
    ///
    /// `EIP712Domain` is listed in `types` because some signers hash an empty domain without it.
    /// Integers are decimal strings: JSON numbers lose precision above 2^53, and every common
    /// typed-data implementation (go-ethereum's apitypes, ethers, viem) parses decimal strings.
    pub fn typed_data(&self, domain: &TokenDomain) -> Value {
        json!({
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                "TransferWithAuthorization": [
                    {"name": "from", "type": "address"},
                    {"name": "to", "type": "address"},
                    {"name": "value", "type": "uint256"},
                    {"name": "validAfter", "type": "uint256"},
                    {"name": "validBefore", "type": "uint256"},
                    {"name": "nonce", "type": "bytes32"},
                ],
            },
            "primaryType": "TransferWithAuthorization",
            "domain": {
                "name": domain.name,
                "version": domain.version,
                "chainId": domain.chain_id,
                "verifyingContract": domain.verifying_contract.to_checksum(None),
            },
            "message": {
                "from": self.from.to_checksum(None),
                "to": self.to.to_checksum(None),
                "value": self.value.to_string(),
                "validAfter": self.valid_after.to_string(),
                "validBefore": self.valid_before.to_string(),
                "nonce": self.nonce.to_string(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::dyn_abi::TypedData;
    use alloy::primitives::{b256, hex};
    use alloy::signers::SignerSync;
    use alloy::signers::local::PrivateKeySigner;

    // Anvil's second well-known test key (docs/protocols.md §4, golden vectors).
    const KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

    fn golden(chain_id: u64) -> (TokenDomain, Authorization) {
        let usdc = usdc_on(chain_id).unwrap();
        let domain = TokenDomain {
            name: usdc.name.into(),
            version: usdc.version.into(),
            chain_id,
            verifying_contract: usdc.address,
        };
        let auth = Authorization {
            from: address!("0x70997970C51812dc3A010C7d01b50e0d17dc79C8"),
            to: address!("0x209693Bc6afc0C5328bA36FaF03C514EF312287C"),
            value: U256::from(10_000u64),
            valid_after: 0,
            valid_before: 1_900_000_000,
            nonce: B256::repeat_byte(0x11),
        };
        (domain, auth)
    }

    fn check(chain_id: u64, separator: B256, digest: B256, signature: &str) {
        let (domain, auth) = golden(chain_id);
        assert_eq!(
            domain.separator(),
            separator,
            "domain separator, chain {chain_id}"
        );
        assert_eq!(
            auth.signing_hash(&domain),
            digest,
            "digest, chain {chain_id}"
        );
        let signer: PrivateKeySigner = KEY.parse().unwrap();
        assert_eq!(signer.address(), auth.from);
        let sig = signer.sign_hash_sync(&digest).unwrap();
        assert_eq!(
            hex::encode_prefixed(sig.as_bytes()),
            signature,
            "signature, chain {chain_id}"
        );
    }

    #[test]
    fn golden_vectors_base() {
        check(
            8453,
            b256!("0x02fa7265e7c5d81118673727957699e4d68f74cd74b7db77da710fe8a2c7834f"),
            b256!("0x5346fb68bb02b6b6c0c2e03c2725b9a534880b830f94a44270ace4183a5d52ae"),
            "0xe63437c90839aed448e63ffe9c21740b853f70cfd3334bd8ad3dcb6b9a00150175c8b7de8abc7e45f947bdffa460567ce73cc34bd10395fd248a271442077faf1b",
        );
    }

    #[test]
    fn golden_vectors_base_sepolia() {
        check(
            84532,
            b256!("0x71f17a3b2ff373b803d70a5a07c046c1a2bc8e89c09ef722fcb047abe94c9818"),
            b256!("0xc72535830abf1dc4187193153665b256d688829ccda7ee169f8821f653253119"),
            "0x4c906a47a947ae0d3352d162c153374ae5a94ef8f09a948307cff212aaf893707462a82325b84e3a6fe23cd64944aa1cfd6fbb0addc004e4b369708ab0da17581c",
        );
    }

    #[test]
    fn typehash_matches_the_spec() {
        let (_, auth) = golden(8453);
        assert_eq!(
            auth.to_sol().eip712_type_hash(),
            b256!("0x7c7c6cdb67a18743f49ec6fa9b35f50d52ed05cbed4cc592e13b44501c1a2267")
        );
    }

    /// What the remote signer hashes (the JSON) is what we verify against (the sol struct).
    #[test]
    fn typed_data_json_hashes_to_the_same_digest() {
        for chain_id in [8453, 84532, 1] {
            let (domain, auth) = golden(chain_id);
            let typed: TypedData = serde_json::from_value(auth.typed_data(&domain)).unwrap();
            assert_eq!(
                typed.eip712_signing_hash().unwrap(),
                auth.signing_hash(&domain),
                "chain {chain_id}"
            );
        }
    }

    #[test]
    fn known_usdc_lookup_is_per_chain() {
        let base_usdc = usdc_on(8453).unwrap().address;
        assert!(known_usdc(8453, base_usdc).is_some());
        assert!(known_usdc(84532, base_usdc).is_none());
        assert_eq!(usdc_on(84532).unwrap().name, "USDC");
    }
}
