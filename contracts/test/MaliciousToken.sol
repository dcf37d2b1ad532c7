// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title MaliciousToken (attack tests only)
/// @notice An ERC-20 whose `transfer` calls back into a target contract with prepared
/// calldata before moving tokens: a reentrancy attempt through the token. It records
/// whether the reentrant call succeeded and what it reverted with.
contract MaliciousToken is ERC20 {
    address public target;
    bytes public attackCalldata;
    bool public armed;
    uint256 public attempts;
    uint256 public successes;
    bytes public lastRevertData;

    event ReentryAttempted(bool success, bytes returnData);

    constructor() ERC20("Malicious", "MAL") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @notice Arm the attack: the next outgoing `transfer` calls `target` with `data`.
    function arm(address target_, bytes calldata data) external {
        target = target_;
        attackCalldata = data;
        armed = true;
    }

    function transfer(address to, uint256 value) public override returns (bool) {
        if (armed) {
            armed = false;
            attempts += 1;
            (bool ok, bytes memory ret) = target.call(attackCalldata);
            if (ok) successes += 1;
            lastRevertData = ret;
            emit ReentryAttempted(ok, ret);
        }
        return super.transfer(to, value);
    }
}
