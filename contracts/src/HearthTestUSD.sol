// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title HearthTestUSD (hUSD)
/// @notice Development payment token: a plain ERC-20 with 6 decimals, like the USD
/// stablecoins Hearth expects to settle in on a real chain.
/// @dev Anyone may mint (a faucet): never deploy this to a chain where value matters.
contract HearthTestUSD is ERC20 {
    /// @notice Emitted when the faucet mints `amount` base units to `to`.
    event FaucetMinted(address indexed to, uint256 amount);

    constructor() ERC20("HearthTestUSD", "hUSD") {}

    /// @notice 6 decimals: one hUSD is 1,000,000 base units.
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /// @notice Mint `amount` base units to `to` (development faucet, unrestricted).
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
        emit FaucetMinted(to, amount);
    }
}
