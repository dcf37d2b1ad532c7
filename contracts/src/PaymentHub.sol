// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title PaymentHub
/// @notice Buyers deposit an ERC-20 and pay providers with cumulative EIP-712 vouchers.
///
/// A voucher says "`buyer` owes `provider` a total of `cumulativeAmount` of `token` in
/// channel epoch `epoch`". Each new voucher replaces the last, so a provider redeems only
/// the latest one and a single transaction settles every job the buyer ever paid for.
/// `redeem` pays the difference between the voucher and what the channel already
/// redeemed, minus the protocol fee (basis points, accrued for the treasury).
///
/// Epochs let a channel start afresh: once a voucher of epoch `e` is redeemed, vouchers
/// of earlier epochs are void and the redeemed counter restarts at zero. Only the
/// channel's provider can make that happen (`PaymentHubEpochAdvanceByProviderOnly`):
/// it holds the old epoch's vouchers and redeems them first, so no buyer can void what
/// it owes by redeeming a small voucher of a newer epoch itself.
///
/// Collateral: a buyer `lock`s part of its balance for one provider. A redemption draws
/// on that channel's lock first and only then on the buyer's free balance, so money
/// locked for a provider cannot be taken by vouchers the buyer signed to others. A
/// provider that accepts vouchers only up to `redeemed + locked - unlocking` of its
/// channel (see `collateral`) is paid in full whatever the buyer promised elsewhere.
/// Releasing a lock takes the same notice as a withdrawal (`requestUnlock`, then
/// `executeUnlock`), during which the provider can still redeem.
///
/// Withdrawals take a notice period (`withdrawalDelay`) during which providers can still
/// redeem the buyer's vouchers; the buyer receives what is left when the notice ends.
/// If a buyer's lock and balance cannot cover a voucher, `redeem` pays what there is and
/// the rest stays redeemable later.
contract PaymentHub is EIP712, Ownable, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice The EIP-712 struct every voucher signature covers.
    bytes32 public constant VOUCHER_TYPEHASH =
        keccak256("Voucher(address buyer,address provider,address token,uint256 cumulativeAmount,uint64 epoch)");

    /// @notice The highest protocol fee the owner can set: 10 %.
    uint16 public constant MAX_FEE_BPS = 1000;

    /// @notice A signed promise of cumulative payment from a buyer to a provider.
    struct Voucher {
        address buyer;
        address provider;
        address token;
        uint256 cumulativeAmount;
        uint64 epoch;
    }

    struct Channel {
        uint64 epoch;
        uint192 redeemed;
    }

    struct PendingWithdrawal {
        uint192 amount;
        uint64 unlockAt;
    }

    /// @notice How long a buyer's withdrawal notice lasts, in seconds.
    uint64 public immutable withdrawalDelay;

    uint16 private _feeBps;
    address private _treasury;
    mapping(address buyer => mapping(address token => uint256)) private _balances;
    mapping(address buyer => mapping(address provider => mapping(address token => Channel))) private _channels;
    mapping(address buyer => mapping(address token => PendingWithdrawal)) private _withdrawals;
    mapping(address buyer => mapping(address provider => mapping(address token => uint256))) private _locked;
    mapping(address buyer => mapping(address provider => mapping(address token => PendingWithdrawal))) private
        _unlocks;
    mapping(address token => uint256) private _fees;

    error PaymentHubZeroAmount();
    error PaymentHubZeroAddress();
    error PaymentHubFeeTooHigh(uint16 feeBps, uint16 maxFeeBps);
    error PaymentHubInvalidSignature(uint8 reason);
    error PaymentHubWrongSigner(address recovered, address buyer);
    error PaymentHubStaleEpoch(uint64 voucherEpoch, uint64 channelEpoch);
    error PaymentHubEpochAdvanceByProviderOnly(uint64 voucherEpoch, uint64 channelEpoch, address caller);
    error PaymentHubInsufficientBalance(uint256 available, uint256 requested);
    error PaymentHubNoUnlockPending(address buyer, address provider, address token);
    error PaymentHubNothingToRedeem(uint256 cumulativeAmount, uint256 alreadyRedeemed);
    error PaymentHubBuyerBalanceEmpty(address buyer, address token);
    error PaymentHubAmountTooLarge(uint256 amount);
    error PaymentHubMixedBatch(uint256 index);
    error PaymentHubEmptyBatch();
    error PaymentHubLengthMismatch(uint256 vouchers, uint256 signatures);
    error PaymentHubNoWithdrawalPending(address buyer, address token);
    error PaymentHubWithdrawalNotReady(uint64 unlockAt, uint64 nowTs);
    error PaymentHubNotTreasury(address caller);

    /// @notice `buyer` deposited `amount` of `token` (what arrived, net of transfer fees).
    event Deposited(address indexed buyer, address indexed token, uint256 amount);
    /// @notice `provider` redeemed `amount` from `buyer` (`fee` of it to the treasury),
    /// bringing the channel to `cumulativeAmount` in `epoch`.
    event Redeemed(
        address indexed buyer,
        address indexed provider,
        address indexed token,
        uint256 amount,
        uint256 fee,
        uint256 cumulativeAmount,
        uint64 epoch
    );
    /// @notice `buyer` locked `amount` of `token` for `provider`; `locked` is the new total.
    event Locked(address indexed buyer, address indexed provider, address indexed token, uint256 amount, uint256 locked);
    /// @notice `buyer` gave notice to release `amount` of its lock for `provider` at `unlockAt`.
    event UnlockRequested(
        address indexed buyer, address indexed provider, address indexed token, uint256 amount, uint64 unlockAt
    );
    /// @notice `buyer` withdrew its notice to release a lock for `provider`.
    event UnlockCancelled(address indexed buyer, address indexed provider, address indexed token);
    /// @notice `amount` of `buyer`'s lock for `provider` went back to its free balance.
    event Unlocked(address indexed buyer, address indexed provider, address indexed token, uint256 amount);
    /// @notice `buyer` gave notice to withdraw `amount` of `token` at `unlockAt`.
    event WithdrawalRequested(address indexed buyer, address indexed token, uint256 amount, uint64 unlockAt);
    /// @notice `buyer` withdrew its pending withdrawal notice.
    event WithdrawalCancelled(address indexed buyer, address indexed token);
    /// @notice `buyer` received `amount` of `token` after its notice ended.
    event Withdrawn(address indexed buyer, address indexed token, uint256 amount);
    /// @notice The treasury took `amount` of accrued `token` fees to `to`.
    event FeesWithdrawn(address indexed token, address indexed to, uint256 amount);
    /// @notice The owner changed the protocol fee.
    event FeeChanged(uint16 oldFeeBps, uint16 newFeeBps);
    /// @notice The owner changed the treasury.
    event TreasuryChanged(address oldTreasury, address newTreasury);

    /// @param owner_ may change the fee (up to `MAX_FEE_BPS`) and the treasury.
    /// @param treasury_ receives protocol fees.
    /// @param feeBps_ protocol fee in basis points of each redemption.
    /// @param withdrawalDelay_ buyers' withdrawal notice in seconds.
    constructor(address owner_, address treasury_, uint16 feeBps_, uint64 withdrawalDelay_)
        EIP712("HearthPaymentHub", "1")
        Ownable(owner_)
    {
        if (treasury_ == address(0)) revert PaymentHubZeroAddress();
        if (feeBps_ > MAX_FEE_BPS) revert PaymentHubFeeTooHigh(feeBps_, MAX_FEE_BPS);
        _treasury = treasury_;
        _feeBps = feeBps_;
        withdrawalDelay = withdrawalDelay_;
    }

    // ----------------------------------------------------------------- buyers

    /// @notice Deposit `amount` of `token` (approve this contract first). Credits what
    /// actually arrived, so fee-on-transfer tokens cannot inflate balances.
    function deposit(address token, uint256 amount) external nonReentrant {
        if (amount == 0) revert PaymentHubZeroAmount();
        IERC20 t = IERC20(token);
        uint256 before = t.balanceOf(address(this));
        t.safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = t.balanceOf(address(this)) - before;
        _balances[msg.sender][token] += received;
        emit Deposited(msg.sender, token, received);
    }

    /// @notice Give notice to withdraw `amount` of `token`; replaces any earlier notice.
    /// Providers can still redeem until the notice ends.
    function requestWithdrawal(address token, uint256 amount) external {
        if (amount == 0) revert PaymentHubZeroAmount();
        if (amount > type(uint192).max) revert PaymentHubAmountTooLarge(amount);
        uint64 unlockAt = uint64(block.timestamp) + withdrawalDelay;
        _withdrawals[msg.sender][token] = PendingWithdrawal(uint192(amount), unlockAt);
        emit WithdrawalRequested(msg.sender, token, amount, unlockAt);
    }

    /// @notice Withdraw a pending notice (the deposit stays).
    function cancelWithdrawal(address token) external {
        if (_withdrawals[msg.sender][token].unlockAt == 0) revert PaymentHubNoWithdrawalPending(msg.sender, token);
        delete _withdrawals[msg.sender][token];
        emit WithdrawalCancelled(msg.sender, token);
    }

    /// @notice After the notice ends, pay the buyer the requested amount, or its whole
    /// balance if redemptions during the notice left less.
    function executeWithdrawal(address token) external nonReentrant {
        PendingWithdrawal memory w = _withdrawals[msg.sender][token];
        if (w.unlockAt == 0) revert PaymentHubNoWithdrawalPending(msg.sender, token);
        if (block.timestamp < w.unlockAt) revert PaymentHubWithdrawalNotReady(w.unlockAt, uint64(block.timestamp));
        uint256 bal = _balances[msg.sender][token];
        uint256 amount = w.amount < bal ? w.amount : bal;
        delete _withdrawals[msg.sender][token];
        _balances[msg.sender][token] = bal - amount;
        emit Withdrawn(msg.sender, token, amount);
        if (amount > 0) IERC20(token).safeTransfer(msg.sender, amount);
    }

    /// @notice Lock `amount` of the free balance of `token` for `provider`: only vouchers
    /// to that provider can draw on it, until a notice to release it (`requestUnlock`) ends.
    function lock(address provider, address token, uint256 amount) external {
        if (amount == 0) revert PaymentHubZeroAmount();
        if (provider == address(0)) revert PaymentHubZeroAddress();
        uint256 bal = _balances[msg.sender][token];
        if (amount > bal) revert PaymentHubInsufficientBalance(bal, amount);
        _balances[msg.sender][token] = bal - amount;
        uint256 total = _locked[msg.sender][provider][token] + amount;
        _locked[msg.sender][provider][token] = total;
        emit Locked(msg.sender, provider, token, amount, total);
    }

    /// @notice Give notice to release `amount` of the lock for `provider` back to the free
    /// balance; replaces any earlier notice for that provider. The provider can still
    /// redeem until the notice ends.
    function requestUnlock(address provider, address token, uint256 amount) external {
        if (amount == 0) revert PaymentHubZeroAmount();
        if (amount > type(uint192).max) revert PaymentHubAmountTooLarge(amount);
        uint64 unlockAt = uint64(block.timestamp) + withdrawalDelay;
        _unlocks[msg.sender][provider][token] = PendingWithdrawal(uint192(amount), unlockAt);
        emit UnlockRequested(msg.sender, provider, token, amount, unlockAt);
    }

    /// @notice Withdraw a pending notice to release a lock (the lock stays).
    function cancelUnlock(address provider, address token) external {
        if (_unlocks[msg.sender][provider][token].unlockAt == 0) {
            revert PaymentHubNoUnlockPending(msg.sender, provider, token);
        }
        delete _unlocks[msg.sender][provider][token];
        emit UnlockCancelled(msg.sender, provider, token);
    }

    /// @notice After the notice ends, move the requested part of the lock for `provider`
    /// (or what redemptions left of it) back to the free balance.
    function executeUnlock(address provider, address token) external {
        PendingWithdrawal memory u = _unlocks[msg.sender][provider][token];
        if (u.unlockAt == 0) revert PaymentHubNoUnlockPending(msg.sender, provider, token);
        if (block.timestamp < u.unlockAt) revert PaymentHubWithdrawalNotReady(u.unlockAt, uint64(block.timestamp));
        uint256 locked = _locked[msg.sender][provider][token];
        uint256 amount = u.amount < locked ? u.amount : locked;
        delete _unlocks[msg.sender][provider][token];
        _locked[msg.sender][provider][token] = locked - amount;
        _balances[msg.sender][token] += amount;
        emit Unlocked(msg.sender, provider, token, amount);
    }

    // -------------------------------------------------------------- providers

    /// @notice Redeem one voucher: pays `voucher.provider` what the channel has not yet
    /// redeemed (from the channel's lock first, then the buyer's free balance), minus the
    /// protocol fee. Anyone may submit it (the money always goes to the provider named
    /// in the voucher), but only that provider may submit a voucher of a newer epoch.
    /// @return paid the gross amount taken from the buyer (fee included).
    function redeem(Voucher calldata voucher, bytes calldata signature) external nonReentrant returns (uint256 paid) {
        uint256 fee;
        (paid, fee) = _settle(voucher, signature, true);
        if (fee > 0) _fees[voucher.token] += fee;
        IERC20(voucher.token).safeTransfer(voucher.provider, paid - fee);
    }

    /// @notice Redeem many buyers' vouchers for one provider and token in a single
    /// transaction and a single token transfer. Vouchers with nothing left to redeem are
    /// skipped rather than failing the batch.
    /// @return paid the gross total taken from all buyers (fee included).
    function redeemMany(Voucher[] calldata vouchers, bytes[] calldata signatures)
        external
        nonReentrant
        returns (uint256 paid)
    {
        uint256 n = vouchers.length;
        if (n == 0) revert PaymentHubEmptyBatch();
        if (n != signatures.length) revert PaymentHubLengthMismatch(n, signatures.length);
        address provider = vouchers[0].provider;
        address token = vouchers[0].token;
        uint256 fees;
        for (uint256 i = 0; i < n; ++i) {
            if (vouchers[i].provider != provider || vouchers[i].token != token) revert PaymentHubMixedBatch(i);
            (uint256 owed, uint256 fee) = _settle(vouchers[i], signatures[i], false);
            paid += owed;
            fees += fee;
        }
        if (paid == 0) revert PaymentHubNothingToRedeem(0, 0);
        if (fees > 0) _fees[token] += fees;
        IERC20(token).safeTransfer(provider, paid - fees);
    }

    // --------------------------------------------------------------- treasury

    /// @notice The treasury takes all accrued fees in `token` to `to`.
    function withdrawFees(address token, address to) external nonReentrant {
        if (msg.sender != _treasury) revert PaymentHubNotTreasury(msg.sender);
        if (to == address(0)) revert PaymentHubZeroAddress();
        uint256 amount = _fees[token];
        if (amount == 0) revert PaymentHubZeroAmount();
        _fees[token] = 0;
        emit FeesWithdrawn(token, to, amount);
        IERC20(token).safeTransfer(to, amount);
    }

    /// @notice Set the protocol fee (owner only, at most `MAX_FEE_BPS`).
    function setFeeBps(uint16 newFeeBps) external onlyOwner {
        if (newFeeBps > MAX_FEE_BPS) revert PaymentHubFeeTooHigh(newFeeBps, MAX_FEE_BPS);
        emit FeeChanged(_feeBps, newFeeBps);
        _feeBps = newFeeBps;
    }

    /// @notice Set the treasury (owner only).
    function setTreasury(address newTreasury) external onlyOwner {
        if (newTreasury == address(0)) revert PaymentHubZeroAddress();
        emit TreasuryChanged(_treasury, newTreasury);
        _treasury = newTreasury;
    }

    // ------------------------------------------------------------------ views

    /// @notice `buyer`'s free balance of `token` (pending withdrawals included, locks not).
    function balanceOf(address buyer, address token) external view returns (uint256) {
        return _balances[buyer][token];
    }

    /// @notice What the (buyer, provider, token) channel has redeemed in its current epoch.
    function redeemed(address buyer, address provider, address token)
        external
        view
        returns (uint256 amount, uint64 epoch)
    {
        Channel memory c = _channels[buyer][provider][token];
        return (c.redeemed, c.epoch);
    }

    /// @notice What `buyer` locked for `provider` in `token`, the part under notice to be
    /// released and when that notice ends (0 when none). A provider is sure to be paid
    /// vouchers up to `redeemed + locked - unlocking` of the channel.
    function collateral(address buyer, address provider, address token)
        external
        view
        returns (uint256 locked, uint256 unlocking, uint64 unlockAt)
    {
        PendingWithdrawal memory u = _unlocks[buyer][provider][token];
        return (_locked[buyer][provider][token], u.amount, u.unlockAt);
    }

    /// @notice `buyer`'s pending withdrawal of `token` (0, 0 when none).
    function pendingWithdrawal(address buyer, address token) external view returns (uint256 amount, uint64 unlockAt) {
        PendingWithdrawal memory w = _withdrawals[buyer][token];
        return (w.amount, w.unlockAt);
    }

    /// @notice Fees accrued in `token` and not yet withdrawn by the treasury.
    function accruedFees(address token) external view returns (uint256) {
        return _fees[token];
    }

    /// @notice The protocol fee in basis points.
    function feeBps() external view returns (uint16) {
        return _feeBps;
    }

    /// @notice Where fees go.
    function treasury() external view returns (address) {
        return _treasury;
    }

    /// @notice The EIP-712 digest a buyer signs for `voucher` (for off-chain checks).
    function voucherDigest(Voucher calldata voucher) external view returns (bytes32) {
        return _hashTypedDataV4(_structHash(voucher));
    }

    // --------------------------------------------------------------- internal

    function _structHash(Voucher calldata v) private pure returns (bytes32) {
        return keccak256(abi.encode(VOUCHER_TYPEHASH, v.buyer, v.provider, v.token, v.cumulativeAmount, v.epoch));
    }

    /// @dev Checks the signature and epoch, moves the owed amount out of the buyer's
    /// balance and advances the channel. Returns the gross amount and its fee (both 0
    /// if nothing is owed; with `strict` that reverts instead).
    function _settle(Voucher calldata v, bytes calldata signature, bool strict)
        private
        returns (uint256 owed, uint256 fee)
    {
        _verify(v, signature);
        if (v.cumulativeAmount > type(uint192).max) revert PaymentHubAmountTooLarge(v.cumulativeAmount);

        Channel memory c = _channels[v.buyer][v.provider][v.token];
        if (v.epoch < c.epoch) revert PaymentHubStaleEpoch(v.epoch, c.epoch);
        if (v.epoch > c.epoch && msg.sender != v.provider) {
            revert PaymentHubEpochAdvanceByProviderOnly(v.epoch, c.epoch, msg.sender);
        }
        uint256 already = v.epoch == c.epoch ? c.redeemed : 0;
        if (v.cumulativeAmount <= already) {
            if (strict) revert PaymentHubNothingToRedeem(v.cumulativeAmount, already);
            return (0, 0);
        }
        owed = v.cumulativeAmount - already;
        uint256 locked = _locked[v.buyer][v.provider][v.token];
        uint256 fromLock = owed < locked ? owed : locked;
        uint256 bal = _balances[v.buyer][v.token];
        uint256 fromBalance = owed - fromLock < bal ? owed - fromLock : bal;
        owed = fromLock + fromBalance;
        if (owed == 0) {
            if (strict) revert PaymentHubBuyerBalanceEmpty(v.buyer, v.token);
            return (0, 0);
        }
        fee = (owed * _feeBps) / 10_000;

        uint256 newRedeemed = already + owed;
        _channels[v.buyer][v.provider][v.token] = Channel(v.epoch, uint192(newRedeemed));
        if (fromLock > 0) _locked[v.buyer][v.provider][v.token] = locked - fromLock;
        if (fromBalance > 0) _balances[v.buyer][v.token] = bal - fromBalance;
        _emitRedeemed(v, owed, fee, newRedeemed);
    }

    /// @dev Reverts unless `signature` is a canonical (low-s) signature of `v` by `v.buyer`.
    function _verify(Voucher calldata v, bytes calldata signature) private view {
        (address signer, ECDSA.RecoverError err,) =
            ECDSA.tryRecoverCalldata(_hashTypedDataV4(_structHash(v)), signature);
        if (err != ECDSA.RecoverError.NoError) revert PaymentHubInvalidSignature(uint8(err));
        if (signer != v.buyer) revert PaymentHubWrongSigner(signer, v.buyer);
    }

    function _emitRedeemed(Voucher calldata v, uint256 owed, uint256 fee, uint256 newRedeemed) private {
        emit Redeemed(v.buyer, v.provider, v.token, owed, fee, newRedeemed, v.epoch);
    }
}
