//! The clock being disciplined, as the algorithm sees it.
//!
//! The discipline ([`crate::discipline`]) only talks to a [`Clock`]: the real
//! one (`CLOCK_REALTIME` through `clock_adjtime`, in [`crate::sysclock`]) exists
//! only in the thin IO layer; tests use a simulated clock. Every quantity is in
//! seconds (`f64`) unless its name says otherwise; frequencies are in ppm.
//!
//! Sign conventions (as chrony's): an *offset* is reference time minus local
//! time, so a positive offset means the local clock is behind and must be
//! moved forward; a positive frequency makes the local clock run faster.

/// What a clock operation failed with; the message names the call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{call}: {message}")]
pub struct ClockError {
    pub call: &'static str,
    pub message: String,
}

/// The kernel's view of how well the clock is synchronised (what `adjtimex`
/// readers and the kernel's own RTC update look at).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyncStatus {
    /// Clears `STA_UNSYNC` when true, sets it when false.
    pub synchronised: bool,
    /// Upper bound of the clock's error, seconds (`maxerror`).
    pub max_error: f64,
    /// Estimated error, seconds (`esterror`).
    pub est_error: f64,
}

/// The clock being disciplined.
pub trait Clock {
    /// Monotonic time in seconds: never stepped, used to time samples.
    fn monotonic(&self) -> f64;
    /// The clock's own time, Unix seconds (`CLOCK_REALTIME`): what a step
    /// would move, checked against the earliest sane time.
    fn realtime(&self) -> f64;
    /// The frequency correction currently applied, ppm.
    fn frequency(&self) -> Result<f64, ClockError>;
    /// Sets the frequency correction, ppm (the kernel accepts ±500).
    fn set_frequency(&mut self, ppm: f64) -> Result<(), ClockError>;
    /// Steps the clock by `offset` seconds (`ADJ_SETOFFSET`).
    fn step(&mut self, offset: f64) -> Result<(), ClockError>;
    /// Publishes the synchronisation status to the kernel.
    fn set_sync_status(&mut self, status: SyncStatus) -> Result<(), ClockError>;
    /// The corrections accepted but not really applied up to `monotonic`,
    /// seconds: 0 for a real clock. An observe-only clock keeps a virtual
    /// disciplined clock on top of the real one; a measured offset minus
    /// this is that virtual clock's offset, so the discipline's model stays
    /// true while nothing is touched.
    fn unapplied_correction(&self, monotonic: f64) -> f64 {
        let _ = monotonic;
        0.0
    }
}

/// One filtered measurement of the local clock against a reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When it was taken, on [`Clock::monotonic`]'s scale.
    pub monotonic: f64,
    /// Reference minus local clock, seconds.
    pub offset: f64,
    /// Round-trip delay of the best reading (or the PHC read window),
    /// seconds: half of it bounds the error of `offset`.
    pub delay: f64,
    /// Error already accumulated at the reference (NTP root delay / 2 +
    /// root dispersion; 0 for a PHC), seconds.
    pub root_distance: f64,
}
