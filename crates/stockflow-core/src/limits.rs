//! Every limit the engine enforces, in one place, with the reason for each.
//!
//! The shell has its own limits (request size, queue depths) in
//! `stockflow::config`; the ones here shape what a valid event and a bounded
//! state look like, so they belong to the core.

/// Longest `eventId`, `sku`, `locationId`, `toLocationId`, `sourceSystem` and
/// `correlationId`, in characters. Part of the public contract.
pub const ID_CHARS_MAX: usize = 128;

/// Largest absolute `quantity` of one event. No real stock movement is a
/// billion units; the bound keeps every level far from `i64` overflow
/// (9.2e18) so that sums stay exact instead of being clamped.
pub const QUANTITY_ABS_MAX: i64 = 1_000_000_000;

/// Largest absolute onHand and inTransit of one level: ten billion units.
/// An event that would take a level past it is refused
/// (`quantity_overflow`). The bound is what keeps every roll-up exact: a
/// roll-up sums its levels, and 9.2e8 levels (far more than fit in memory)
/// at the bound still sum within an `i64`.
pub const LEVEL_QUANTITY_ABS_MAX: i64 = 10_000_000_000;

/// How far back (in event time, from the newest event seen at a level) the
/// per-level history for COUNT reconciliation reaches. The contract asks for
/// at least 24 h.
pub const COUNT_HISTORY_WINDOW_NS: i64 = 24 * 3600 * 1_000_000_000;

/// Most history entries one level keeps, whatever the window says. A level
/// hit by more distinct event timestamps than this within the window loses
/// its oldest entries; a COUNT older than what was lost is then rejected
/// (`count_beyond_history`) rather than answered inexactly. 4096 entries is
/// 64 KiB for one very hot level, and covers one event every 21 s for 24 h.
pub const COUNT_HISTORY_ENTRIES_MAX: usize = 4096;

/// Longest hold an order can ask for (`holdSeconds` of an order or of a
/// RESERVATION event, and the server's default): a week. A hold is stock
/// nobody else can sell; one held longer is a stuck order, not a
/// checkout.
pub const HOLD_SECONDS_MAX: u64 = 7 * 24 * 3600;

/// Most orders holding units at one level at once. A hold is ~40 bytes
/// kept with the level (and in every snapshot of it); a level that 100,000
/// orders hold at once is already far beyond any shelf, so past it a
/// RESERVATION for one more order is refused (`too_many_holds`) instead of
/// letting one level grow without bound.
pub const HOLDS_PER_LEVEL_MAX: usize = 100_000;

/// Default number of state partitions. Each has a single writer; 12 spreads
/// evenly over 1, 2, 3, 4 and 6 apply threads.
pub const PARTITIONS_DEFAULT: u16 = 12;

/// Upper bound on partitions: routes are stored as `u16`, and more partitions
/// than this only add per-partition overhead on any plausible machine.
pub const PARTITIONS_MAX: u16 = 1024;

/// Default dedup retention: an eventId is remembered this long after it was
/// committed (the contract asks for at least 7 days).
pub const DEDUP_RETENTION_NS_DEFAULT: i64 = 7 * 24 * 3600 * 1_000_000_000;

/// Default most eventIds remembered at once (about 45 bytes each in memory,
/// so 4.5 GB at this bound). Past it the oldest are forgotten early and
/// counted in `Dedup::evicted_early`, never silently.
pub const DEDUP_ENTRIES_MAX_DEFAULT: usize = 100_000_000;

/// EventIds the server's dedup table is sized for at start (~140 MB of
/// address space, touched as it fills). Growing a table means moving every
/// id into fresh memory; griddle spreads the moving over later inserts,
/// but the page faults of the new table still cost ~25 ms per commit for a
/// few commits, so the first growth is put off to 7.3M ids.
pub const DEDUP_PRESIZED_ENTRIES: usize = 4_000_000;

/// Longest free-text catalog field (product and location names), in
/// characters.
pub const TEXT_CHARS_MAX: usize = 512;

/// Price changes kept per product (oldest dropped first).
pub const PRICE_HISTORY_MAX: usize = 100;

/// Alert events kept per partition for GET /v1/alerts (active alerts are
/// always kept, whatever their age).
pub const ALERTS_KEPT_PER_PARTITION: usize = 2_000;

/// A level with no change for this long raises STALE.
pub const STALE_AFTER_NS_DEFAULT: i64 = 3600 * 1_000_000_000;

/// Refused reservations within [`BURST_WINDOW_NS_DEFAULT`] that raise
/// RESERVATION_REJECTED.
pub const BURST_REJECTIONS_DEFAULT: u32 = 5;

pub const BURST_WINDOW_NS_DEFAULT: i64 = 60 * 1_000_000_000;

/// Bytes of a token name: the name is recorded with every change its
/// holder makes (history entries keep its length in one byte).
pub const BY_BYTES_MAX: usize = 64;

/// Transitions an order remembers (its placement and the newest ones):
/// an order extended every minute for a week must not grow without end.
pub const ORDER_TRANSITIONS_MAX: usize = 32;

/// Alert mutes in force at once (a new mute of a scope already muted
/// replaces it).
pub const MUTES_MAX: usize = 1_000;

/// Longest a mute lasts, in minutes (30 days).
pub const MUTE_MINUTES_MAX: i64 = 30 * 24 * 60;

/// How long an acknowledgement is kept (an alert active for longer is
/// shown unacknowledged again), and how many at most (oldest first out).
pub const ACKNOWLEDGEMENT_KEPT_NS: i64 = 30 * 24 * 3600 * 1_000_000_000;
pub const ACKNOWLEDGEMENTS_MAX: usize = 100_000;
