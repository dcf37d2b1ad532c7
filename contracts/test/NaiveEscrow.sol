// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

/// @title NaiveEscrow (benchmark baseline, not for production)
/// @notice The straightforward design Hearth avoids: every job is settled on chain by
/// its own transaction that debits the buyer's escrow and transfers to the provider.
contract NaiveEscrow {
    using SafeERC20 for IERC20;

    mapping(address buyer => mapping(address token => uint256)) public balanceOf;
    mapping(bytes32 jobId => bool) public settled;

    error NaiveEscrowAlreadySettled(bytes32 jobId);
    error NaiveEscrowInsufficientBalance(uint256 requested, uint256 available);

    event Deposited(address indexed buyer, address indexed token, uint256 amount);
    event JobSettled(bytes32 indexed jobId, address indexed buyer, address indexed provider, uint256 amount);

    function deposit(address token, uint256 amount) external {
        balanceOf[msg.sender][token] += amount;
        emit Deposited(msg.sender, token, amount);
        IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice The buyer pays `amount` for job `jobId` to `provider`: one transaction per job.
    function settle(bytes32 jobId, address provider, address token, uint256 amount) external {
        if (settled[jobId]) revert NaiveEscrowAlreadySettled(jobId);
        uint256 bal = balanceOf[msg.sender][token];
        if (amount > bal) revert NaiveEscrowInsufficientBalance(amount, bal);
        settled[jobId] = true;
        balanceOf[msg.sender][token] = bal - amount;
        emit JobSettled(jobId, msg.sender, provider, amount);
        IERC20(token).safeTransfer(provider, amount);
    }
}
