// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title ProviderRegistry
/// @notice Providers stake `stakeToken` to bid and name the libp2p peer id they bid
/// as. Stake is what makes Sybil bidding cost: a provider is *active* while its bonded
/// stake is at least `minStake`.
///
/// The registry maps each address to the peer id *it* claims, never a peer id to an
/// owner: a buyer trusts a bid only when the bid is signed by peer id P, names address
/// A, and A's record names P (`isActiveFor(A, P)`). Both keys then vouch for the pair
/// (the ed25519 key in the signed bid, the Ethereum key in the registration), so anyone
/// may write any peer id into their own record without blocking or impersonating the
/// peer that really holds it.
///
/// Leaving takes `unbondingDelay`: unbonding stake stays slashable until it is
/// withdrawn, so a provider cannot escape a slash by unbonding first. Holders of
/// `ARBITER_ROLE` slash with an evidence hash (the hash of the off-chain proof). The
/// role is the hook for automatic fraud proofs: grant it to a verifier contract later.
contract ProviderRegistry is AccessControl, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice May slash providers (a person today, a fraud-proof verifier later).
    bytes32 public constant ARBITER_ROLE = keccak256("ARBITER_ROLE");

    struct Provider {
        uint256 stake;
        uint256 unbonding;
        uint64 unbondingUnlockAt;
        string peerId;
    }

    /// @notice The token providers stake.
    IERC20 public immutable stakeToken;
    /// @notice Bonded stake needed to be active.
    uint256 public immutable minStake;
    /// @notice Seconds between `beginUnbonding` and `withdrawUnbonded`.
    uint64 public immutable unbondingDelay;

    address private _slashRecipient;
    mapping(address provider => Provider) private _providers;

    error ProviderRegistryZeroAmount();
    error ProviderRegistryZeroAddress();
    error ProviderRegistryBelowMinStake(uint256 stake, uint256 minStake);
    error ProviderRegistryBadPeerId();
    error ProviderRegistryNotRegistered(address provider);
    error ProviderRegistryInsufficientStake(uint256 requested, uint256 available);
    error ProviderRegistryUnbondingNotReady(uint64 unlockAt, uint64 nowTs);
    error ProviderRegistryNothingUnbonding(address provider);

    /// @notice `provider` registered `peerId` with `stake` bonded.
    event ProviderRegistered(address indexed provider, string peerId, uint256 stake);
    /// @notice `provider` added `amount` to its bonded stake.
    event StakeAdded(address indexed provider, uint256 amount);
    /// @notice `provider` moved `amount` into unbonding, withdrawable at `unlockAt`.
    event UnbondingStarted(address indexed provider, uint256 amount, uint64 unlockAt);
    /// @notice `provider` withdrew `amount` of unbonded stake.
    event UnbondedWithdrawn(address indexed provider, uint256 amount);
    /// @notice `arbiter` slashed `amount` from `provider` for the evidence `evidenceHash`.
    event ProviderSlashed(address indexed provider, address indexed arbiter, uint256 amount, bytes32 evidenceHash);

    /// @param admin may grant and revoke roles (including `ARBITER_ROLE`).
    /// @param arbiter initial holder of `ARBITER_ROLE`.
    /// @param slashRecipient_ receives slashed stake (the treasury).
    constructor(
        IERC20 stakeToken_,
        uint256 minStake_,
        uint64 unbondingDelay_,
        address admin,
        address arbiter,
        address slashRecipient_
    ) {
        if (address(stakeToken_) == address(0) || admin == address(0) || slashRecipient_ == address(0)) {
            revert ProviderRegistryZeroAddress();
        }
        stakeToken = stakeToken_;
        minStake = minStake_;
        unbondingDelay = unbondingDelay_;
        _slashRecipient = slashRecipient_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        if (arbiter != address(0)) _grantRole(ARBITER_ROLE, arbiter);
    }

    /// @notice Register (or re-register) the peer id `peerId` the caller bids as, and bond
    /// `amount` more stake; the bonded total must reach `minStake`. Approve this contract
    /// first. A peer id is not exclusive: see the contract's notes.
    function register(string calldata peerId, uint256 amount) external nonReentrant {
        bytes memory raw = bytes(peerId);
        if (raw.length == 0 || raw.length > 128) revert ProviderRegistryBadPeerId();
        Provider storage p = _providers[msg.sender];
        uint256 newStake = p.stake + amount;
        if (newStake < minStake || newStake == 0) revert ProviderRegistryBelowMinStake(newStake, minStake);
        p.peerId = peerId;
        p.stake = newStake;
        emit ProviderRegistered(msg.sender, peerId, newStake);
        if (amount > 0) stakeToken.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Bond `amount` more stake.
    function addStake(uint256 amount) external nonReentrant {
        if (amount == 0) revert ProviderRegistryZeroAmount();
        Provider storage p = _providers[msg.sender];
        if (bytes(p.peerId).length == 0) revert ProviderRegistryNotRegistered(msg.sender);
        p.stake += amount;
        emit StakeAdded(msg.sender, amount);
        stakeToken.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Move `amount` of bonded stake into unbonding; the unlock time restarts.
    /// Unbonding stake is still slashable.
    function beginUnbonding(uint256 amount) external {
        if (amount == 0) revert ProviderRegistryZeroAmount();
        Provider storage p = _providers[msg.sender];
        if (amount > p.stake) revert ProviderRegistryInsufficientStake(amount, p.stake);
        p.stake -= amount;
        p.unbonding += amount;
        uint64 unlockAt = uint64(block.timestamp) + unbondingDelay;
        p.unbondingUnlockAt = unlockAt;
        emit UnbondingStarted(msg.sender, amount, unlockAt);
    }

    /// @notice Withdraw all unbonding stake once its delay has passed.
    function withdrawUnbonded() external nonReentrant {
        Provider storage p = _providers[msg.sender];
        uint256 amount = p.unbonding;
        if (amount == 0) revert ProviderRegistryNothingUnbonding(msg.sender);
        if (block.timestamp < p.unbondingUnlockAt) {
            revert ProviderRegistryUnbondingNotReady(p.unbondingUnlockAt, uint64(block.timestamp));
        }
        p.unbonding = 0;
        p.unbondingUnlockAt = 0;
        emit UnbondedWithdrawn(msg.sender, amount);
        stakeToken.safeTransfer(msg.sender, amount);
    }

    /// @notice Slash up to `amount` from `provider` (bonded stake first, then unbonding)
    /// to the slash recipient, citing `evidenceHash`. Returns what was taken.
    function slash(address provider, uint256 amount, bytes32 evidenceHash)
        external
        onlyRole(ARBITER_ROLE)
        nonReentrant
        returns (uint256 taken)
    {
        if (amount == 0) revert ProviderRegistryZeroAmount();
        Provider storage p = _providers[provider];
        uint256 fromStake = amount < p.stake ? amount : p.stake;
        p.stake -= fromStake;
        uint256 rest = amount - fromStake;
        uint256 fromUnbonding = rest < p.unbonding ? rest : p.unbonding;
        p.unbonding -= fromUnbonding;
        taken = fromStake + fromUnbonding;
        if (taken == 0) revert ProviderRegistryInsufficientStake(amount, 0);
        emit ProviderSlashed(provider, msg.sender, taken, evidenceHash);
        stakeToken.safeTransfer(_slashRecipient, taken);
    }

    /// @notice Bonded stake, unbonding stake, its unlock time and peer id of `provider`.
    function providerInfo(address provider)
        external
        view
        returns (uint256 stake, uint256 unbonding, uint64 unbondingUnlockAt, string memory peerId)
    {
        Provider storage p = _providers[provider];
        return (p.stake, p.unbonding, p.unbondingUnlockAt, p.peerId);
    }

    /// @notice Whether `provider` has at least `minStake` bonded.
    function isActive(address provider) external view returns (bool) {
        Provider storage p = _providers[provider];
        return bytes(p.peerId).length != 0 && p.stake >= minStake && p.stake > 0;
    }

    /// @notice Whether `provider` is active and registered `peerId` as the peer id it bids
    /// as: the one check a buyer makes of a bid signed by `peerId` that names `provider`.
    function isActiveFor(address provider, string calldata peerId) external view returns (bool) {
        Provider storage p = _providers[provider];
        return p.stake >= minStake && p.stake > 0 && keccak256(bytes(p.peerId)) == keccak256(bytes(peerId))
            && bytes(peerId).length != 0;
    }

    /// @notice Where slashed stake goes.
    function slashRecipient() external view returns (address) {
        return _slashRecipient;
    }
}
