// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/// A minimal stand-in for the ERC-8004 Identity Registry, for tests on anvil. It has the real
/// events and the functions agent0-sdk and the coordinator call, with the same signatures:
/// `register()`, `register(string)`, `register(string,(string,bytes)[])`, `setAgentURI`,
/// `tokenURI`, `ownerOf`, `setMetadata` / `getMetadata`. It is not an ERC-721 implementation
/// (no transfers or approvals) and has no access control beyond token ownership.
contract IdentityRegistry {
    struct MetadataEntry {
        string metadataKey;
        bytes metadataValue;
    }

    event Registered(uint256 indexed agentId, string agentURI, address indexed owner);
    event URIUpdated(uint256 indexed agentId, string newURI, address indexed updatedBy);
    event MetadataSet(uint256 indexed agentId, string indexed indexedMetadataKey, string metadataKey, bytes metadataValue);
    event Transfer(address indexed from, address indexed to, uint256 indexed tokenId);

    error ERC721NonexistentToken(uint256 tokenId);
    error NotOwner(uint256 agentId, address caller);

    uint256 private nextId;
    mapping(uint256 => address) private owners;
    mapping(uint256 => string) private uris;
    mapping(uint256 => mapping(string => bytes)) private metadata;

    function register() external returns (uint256 agentId) {
        agentId = mint("");
    }

    function register(string calldata agentURI) external returns (uint256 agentId) {
        agentId = mint(agentURI);
    }

    function register(string calldata agentURI, MetadataEntry[] calldata entries) external returns (uint256 agentId) {
        agentId = mint(agentURI);
        for (uint256 i = 0; i < entries.length; i++) {
            setMeta(agentId, entries[i].metadataKey, entries[i].metadataValue);
        }
    }

    function setAgentURI(uint256 agentId, string calldata newURI) external {
        onlyOwner(agentId);
        uris[agentId] = newURI;
        emit URIUpdated(agentId, newURI, msg.sender);
    }

    function setMetadata(uint256 agentId, string calldata key, bytes calldata value) external {
        onlyOwner(agentId);
        setMeta(agentId, key, value);
    }

    function getMetadata(uint256 agentId, string calldata key) external view returns (bytes memory) {
        return metadata[agentId][key];
    }

    function tokenURI(uint256 agentId) external view returns (string memory) {
        if (owners[agentId] == address(0)) revert ERC721NonexistentToken(agentId);
        return uris[agentId];
    }

    function ownerOf(uint256 agentId) external view returns (address) {
        address owner = owners[agentId];
        if (owner == address(0)) revert ERC721NonexistentToken(agentId);
        return owner;
    }

    function mint(string memory agentURI) private returns (uint256 agentId) {
        agentId = nextId++;
        owners[agentId] = msg.sender;
        uris[agentId] = agentURI;
        emit Transfer(address(0), msg.sender, agentId);
        emit Registered(agentId, agentURI, msg.sender);
    }

    function setMeta(uint256 agentId, string memory key, bytes memory value) private {
        metadata[agentId][key] = value;
        emit MetadataSet(agentId, key, key, value);
    }

    function onlyOwner(uint256 agentId) private view {
        if (owners[agentId] != msg.sender) revert NotOwner(agentId, msg.sender);
    }
}
