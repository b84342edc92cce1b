//! The daemon: one thread, one poll(2) loop over a signalfd, a timerfd and
//! the NTP sockets. No async runtime.
//!
//! Each turn: run what is due (PHC samples, NTP requests and timeouts, name
//! resolution retries), arm the timerfd for the earliest next deadline, poll,
//! read what arrived. Every sample of the *selected* source goes to the
//! [`Discipline`]; its outcome may ask for a burst (the next samples of that
//! source at once), step the clock (NTP filters are reset), or slew it.
//!
//! Selection: a PHC refclock that delivers samples wins (it is a local
//! reference with no network path); otherwise the NTP servers whose error
//! intervals agree ([`ntp::select_sources`]), the one with the smallest error
//! bound. A PHC that is missing or fails is retried with a backoff, and the
//! daemon says that it falls back to NTP.
//!
//! With a PHC settled the loop wakes once per second: one ioctl with all
//! the readings of a sample (chrony's `dpoll -2` reads four times a second
//! and updates the clock every `2^poll` seconds; here the sample interval is
//! `2^dpoll` clamped to [1 s, 2^poll s] and every sample updates the clock).

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use minos_common::signals::SignalFd;
use minos_common::Report;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};

use crate::clock::{Clock, Sample};
use crate::config::{Config, NtpSource, NtpSourceKind, PhcRefclock};
use crate::discipline::{Discipline, DisciplineConfig, Outcome, MAX_FREQUENCY_PPM};
use crate::ntp::{self, Candidate, NtpServer, PollConfig, Verdict};
use crate::opener::Opener;
use crate::phc::{Phc, PhcError};
use crate::resolve::{self, Backoff, Lookup, ResolveError, Resolver, Start};
use crate::status::{self, SourceStatus, Status};
use crate::sysclock::{monotonic_now, realtime_now};

/// Readings per PHC sample (one ioctl).
pub const PHC_READINGS: usize = 10;
/// Spacing of burst samples from a PHC, seconds.
const PHC_BURST_SPACING: f64 = 0.01;
/// First retry of a PHC that is missing or failed, seconds (doubles to 64).
const PHC_RETRY_MIN: f64 = 2.0;
const PHC_RETRY_MAX: f64 = 64.0;
/// No update for this many intervals of the selected source (and at least
/// [`STALE_MIN`] s): the clock is marked unsynchronised.
const STALE_INTERVALS: f64 = 8.0;
const STALE_MIN: f64 = 30.0;
/// Samples that must agree before a step with no history: a PHC's second
/// reading; three replies of an NTP server alone.
const PHC_FIRST_STEP_SAMPLES: u32 = 2;
const NTP_FIRST_STEP_SAMPLES: u32 = 3;
/// The fastest slew of observe-only mode's virtual clock, ppm.
const OBSERVE_MAX_SLEW_RATE_PPM: f64 = 500.0;

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub observe: bool,
    pub status_file: PathBuf,
    pub notify_socket: Option<OsString>,
    /// Extra NTP servers from the kernel command line.
    pub extra_servers: Vec<NtpSource>,
}

/// A PHC refclock line and its state.
#[derive(Debug)]
struct PhcSource {
    config: PhcRefclock,
    phc: Option<Phc>,
    interval: f64,
    next: f64,
    retry: f64,
    burst: bool,
    last: Option<Sample>,
    /// The last failure was reported (reported again only after a success).
    failure_reported: bool,
}

impl PhcSource {
    fn new(config: PhcRefclock, now: f64) -> Self {
        let interval = 2f64
            .powi(i32::from(config.dpoll))
            .clamp(1.0, 2f64.powi(i32::from(config.poll)).max(1.0));
        Self {
            config,
            phc: None,
            interval,
            next: now,
            retry: PHC_RETRY_MIN,
            burst: false,
            last: None,
            failure_reported: false,
        }
    }

    fn label(&self) -> String {
        let name = self
            .phc
            .as_ref()
            .and_then(|p| p.name())
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        format!("PHC {}{name}", self.config.device.display())
    }

    /// Opens the device if it is not open; when this process may not (a
    /// root-only device that appeared after the privilege drop), the
    /// device opener does it for source `index`. The device stays open for
    /// the daemon's life.
    fn open(&mut self, opener: Option<(&Opener, usize)>) -> Result<&mut Phc, PhcError> {
        let device = &self.config.device;
        match &mut self.phc {
            Some(phc) => Ok(phc),
            slot @ None => {
                let phc = match (Phc::open(device), opener) {
                    (Err(PhcError::Open { source, .. }), Some((opener, index)))
                        if source.kind() == std::io::ErrorKind::PermissionDenied =>
                    {
                        let file = opener.open(index).map_err(|source| PhcError::Open {
                            device: device.clone(),
                            source,
                        })?;
                        log::info!("{}: opened by the device opener", device.display());
                        Phc::from_file(device, file)
                    }
                    (result, _) => result?,
                };
                Ok(slot.insert(phc))
            }
        }
    }

    /// Takes a sample, opening the device first if needed. On failure the
    /// source waits `retry` seconds (doubling).
    fn sample(&mut self, now: f64, opener: Option<(&Opener, usize)>) -> Option<Sample> {
        let (readings, offset) = (PHC_READINGS, self.config.offset);
        let first = self.phc.as_ref().is_none_or(|p| p.method().is_none());
        let result = self
            .open(opener)
            .and_then(|phc| phc.sample(readings, offset));
        match result {
            Ok(sample) => {
                if let (true, Some(phc)) = (first, &self.phc) {
                    log::info!(
                        "using {} through {}",
                        PhcLabel(phc),
                        phc.method().map_or("?", |m| m.ioctl())
                    );
                }
                self.retry = PHC_RETRY_MIN;
                self.failure_reported = false;
                self.next = now
                    + if self.burst {
                        PHC_BURST_SPACING
                    } else {
                        self.interval
                    };
                self.last = Some(sample);
                Some(sample)
            }
            Err(err) => {
                if !self.failure_reported {
                    log::warn!(
                        "{}; retrying in {:.0} s, other sources are used meanwhile",
                        Report(&err),
                        self.retry
                    );
                    self.failure_reported = true;
                }
                self.last = None;
                self.burst = false;
                self.next = now + self.retry;
                self.retry = (self.retry * 2.0).min(PHC_RETRY_MAX);
                None
            }
        }
    }

    /// Has delivered a sample recently enough to be selected.
    fn usable(&self, now: f64) -> bool {
        self.last
            .is_some_and(|s| now - s.monotonic <= 3.0 * self.interval + 1.0)
    }
}

struct PhcLabel<'a>(&'a Phc);

impl std::fmt::Display for PhcLabel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PHC {}", self.0.device().display())?;
        if let Some(name) = self.0.name() {
            write!(f, " ({name})")?;
        }
        Ok(())
    }
}

/// An NTP line whose name is not resolved yet.
#[derive(Debug)]
struct Unresolved {
    source: NtpSource,
    /// When to start the next lookup (monotonic seconds).
    next: f64,
    backoff: Backoff,
    /// The DNS lookup under way, whose socket is in the loop's poll(2).
    lookup: Option<Lookup>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceId {
    Phc(usize),
    Ntp(usize),
}

/// The daemon's state.
pub struct Daemon {
    clock: Box<dyn Clock>,
    discipline: Discipline,
    max_distance: f64,
    phcs: Vec<PhcSource>,
    servers: Vec<NtpServer>,
    unresolved: Vec<Unresolved>,
    resolver: Resolver,
    selected: Option<SourceId>,
    options: DaemonOptions,
    notified: bool,
    /// READY=1 is due once the status file is written.
    ready_pending: bool,
    /// The selected source's last offset against the real clock.
    last_measured_offset: Option<f64>,
    status_error_reported: bool,
    clock_error_reported: bool,
    refusal_reported: bool,
    opener: Option<Opener>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("phcs", &self.phcs.len())
            .field("servers", &self.servers.len())
            .field("selected", &self.selected)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    pub fn new(config: &Config, mut clock: Box<dyn Clock>, options: DaemonOptions) -> Self {
        let now = monotonic_now();
        let mut initial_frequency = clock.frequency().unwrap_or(0.0);
        if !options.observe && initial_frequency.abs() > MAX_FREQUENCY_PPM {
            // A slew's tick left by an instance that was killed: the clock
            // would run that fast until the first update.
            let frequency = initial_frequency.clamp(-MAX_FREQUENCY_PPM, MAX_FREQUENCY_PPM);
            match clock.set_frequency(frequency) {
                Ok(()) => log::warn!(
                    "the clock ran {initial_frequency:+.3} ppm (a slew left unfinished); \
                     set back to {frequency:+.3} ppm"
                ),
                Err(err) => log::error!("cannot reset the clock's frequency: {err}"),
            }
            initial_frequency = frequency;
        }
        let mut discipline_config = DisciplineConfig::from_config(config);
        if options.observe {
            // The virtual clock is slewed against a monotonic clock that
            // does not follow it: keep the slew small enough for the
            // discipline's model (see ObserveClock).
            discipline_config.max_slew_rate_ppm = discipline_config
                .max_slew_rate_ppm
                .min(OBSERVE_MAX_SLEW_RATE_PPM);
        }
        let phcs = config
            .refclocks
            .iter()
            .map(|r| PhcSource::new(r.clone(), now))
            .collect();
        let unresolved = config
            .ntp_sources
            .iter()
            .chain(&options.extra_servers)
            .map(|s| Unresolved {
                source: s.clone(),
                next: now,
                backoff: Backoff::default(),
                lookup: None,
            })
            .collect();
        Self {
            clock,
            discipline: Discipline::new(discipline_config, initial_frequency),
            max_distance: config.max_distance,
            phcs,
            servers: Vec::new(),
            unresolved,
            resolver: Resolver::default(),
            selected: None,
            options,
            notified: false,
            ready_pending: false,
            last_measured_offset: None,
            status_error_reported: false,
            clock_error_reported: false,
            refusal_reported: false,
            opener: None,
        }
    }

    /// Opens the configured PHC devices now (before a privilege drop); a
    /// missing one is reported at its first sample.
    pub fn open_devices(&mut self) {
        for phc in &mut self.phcs {
            let _ = phc.open(None);
        }
    }

    /// A configured PHC could not be opened (yet).
    pub fn phc_missing(&self) -> bool {
        self.phcs.iter().any(|p| p.phc.is_none())
    }

    /// The device opener for the PHCs that appear after the privilege
    /// drop (see [`crate::opener`]), forked for the configured devices.
    pub fn spawn_opener(&mut self) {
        let devices = self.phcs.iter().map(|p| p.config.device.clone()).collect();
        match Opener::spawn(devices) {
            Ok(opener) => self.opener = Some(opener),
            Err(err) => log::warn!(
                "cannot start the device opener: {err}; a PHC that appears later \
                 cannot be opened"
            ),
        }
    }

    /// Runs until SIGTERM/SIGINT; returns the exit status. However it
    /// ends, the clock is left at the estimated frequency, no slew running.
    pub fn run(&mut self, signals: &SignalFd) -> u8 {
        let status = self.run_loop(signals);
        self.release();
        status
    }

    fn run_loop(&mut self, signals: &SignalFd) -> u8 {
        let timer = match timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        ) {
            Ok(timer) => timer,
            Err(err) => {
                log::error!("timerfd_create: {err}");
                return 1;
            }
        };
        log::info!(
            "started sources={} mode={}",
            self.phcs.len() + self.unresolved.len(),
            self.mode()
        );
        self.write_status();
        loop {
            let now = monotonic_now();
            self.run_due(now);
            let deadline = self.next_deadline();
            if let Err(err) = arm(&timer, deadline) {
                log::error!("timerfd_settime: {err}");
                return 1;
            }
            // Signals, the timer, the NTP sockets, then the name lookups
            // under way (with the index of their entry).
            let lookups: Vec<(usize, BorrowedFd<'_>)> = self
                .unresolved
                .iter()
                .enumerate()
                .filter_map(|(i, u)| Some((i, u.lookup.as_ref()?.fd()?)))
                .collect();
            let fds: Vec<BorrowedFd<'_>> = [signals.as_fd(), timer.as_fd()]
                .into_iter()
                .chain(self.servers.iter().map(NtpServer::fd))
                .chain(lookups.iter().map(|(_, fd)| *fd))
                .collect();
            let lookup_entries: Vec<usize> = lookups.iter().map(|(i, _)| *i).collect();
            let mut poll_fds: Vec<PollFd<'_>> = fds
                .iter()
                .map(|fd| PollFd::new(fd, PollFlags::IN))
                .collect();
            match poll(&mut poll_fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(err) => {
                    log::error!("poll: {err}");
                    return 1;
                }
            }
            let ready: Vec<bool> = poll_fds.iter().map(|p| !p.revents().is_empty()).collect();
            drop(poll_fds);
            if ready.first() == Some(&true) {
                match signals.read() {
                    Ok(Some(signal)) => {
                        log::info!("exiting on {signal:?}");
                        return 0;
                    }
                    Ok(None) => {}
                    Err(err) => {
                        log::error!("reading the signalfd: {err}");
                        return 1;
                    }
                }
            }
            if ready.get(1) == Some(&true) {
                let mut expirations = [0u8; 8];
                let _ = rustix::io::read(&timer, &mut expirations);
            }
            let now = monotonic_now();
            let server_count = self.servers.len();
            for index in 0..server_count {
                if ready.get(index + 2) == Some(&true) {
                    let sample = self.servers.get_mut(index).and_then(|s| s.on_readable(now));
                    if let Some(sample) = sample {
                        self.on_sample(SourceId::Ntp(index), sample);
                    }
                }
            }
            // Highest entry first: a finished lookup's entry may be
            // swap-removed, which moves only the last one.
            for (slot, entry) in lookup_entries.iter().enumerate().rev() {
                if ready.get(2 + server_count + slot) == Some(&true) {
                    self.on_lookup_readable(*entry, now);
                }
            }
        }
    }

    /// On exit: no slew left running (its tick would make the clock run up
    /// to 10 % fast until the next daemon).
    fn release(&mut self) {
        if let Err(err) = self.discipline.release(self.clock.as_mut()) {
            log::error!("cannot set the clock back to its estimated frequency: {err}");
        }
    }

    fn mode(&self) -> &'static str {
        if self.options.observe {
            "observe"
        } else {
            "discipline"
        }
    }

    /// PHC samples, NTP deadlines and name resolution due at `now`.
    fn run_due(&mut self, now: f64) {
        for index in 0..self.phcs.len() {
            let due = self.phcs.get(index).is_some_and(|p| p.next <= now);
            if due {
                let opener = self.opener.as_ref().map(|opener| (opener, index));
                let sample = self.phcs.get_mut(index).and_then(|p| p.sample(now, opener));
                match sample {
                    Some(sample) => self.on_sample(SourceId::Phc(index), sample),
                    None => self.on_source_lost(SourceId::Phc(index)),
                }
            }
        }
        for server in &mut self.servers {
            if server.next_deadline() <= now {
                server.on_deadline(now);
            }
        }
        self.resolve_due(now);
        self.check_stale(now);
        if self
            .discipline
            .slew_deadline()
            .is_some_and(|end| end <= now)
        {
            match self.discipline.end_slew(self.clock.as_mut()) {
                Ok(true) => self.write_status(),
                Ok(false) => {}
                Err(err) => log::error!("cannot end the slew: {err}"),
            }
        }
    }

    /// Starts the lookups that are due and times out the name servers
    /// that did not answer in time; never waits for one.
    fn resolve_due(&mut self, now: f64) {
        let mut index = 0;
        while index < self.unresolved.len() {
            let Some(entry) = self.unresolved.get_mut(index) else {
                break;
            };
            let result = match &mut entry.lookup {
                Some(lookup) => lookup.on_deadline(now),
                None if entry.next <= now => {
                    match self
                        .resolver
                        .start(&entry.source.host, entry.source.port, now)
                    {
                        Start::Done(result) => Some(result),
                        Start::Pending(lookup) => {
                            entry.lookup = Some(lookup);
                            None
                        }
                    }
                }
                None => None,
            };
            match result {
                Some(result) => {
                    if !self.resolved(index, result, now) {
                        index += 1;
                    }
                }
                None => index += 1,
            }
        }
    }

    /// A lookup's answer arrived (its socket was readable).
    fn on_lookup_readable(&mut self, index: usize, now: f64) {
        let result = self
            .unresolved
            .get_mut(index)
            .and_then(|entry| entry.lookup.as_mut())
            .and_then(|lookup| lookup.on_readable(now));
        if let Some(result) = result {
            self.resolved(index, result, now);
        }
    }

    /// Acts on the result of resolving entry `index`; returns whether the
    /// entry was removed.
    fn resolved(
        &mut self,
        index: usize,
        result: Result<Vec<std::net::SocketAddr>, ResolveError>,
        now: f64,
    ) -> bool {
        let Some(entry) = self.unresolved.get_mut(index) else {
            return false;
        };
        entry.lookup = None;
        match result {
            Ok(addrs) => {
                let source = self.unresolved.swap_remove(index).source;
                for addr in resolve::for_source(addrs, &source) {
                    match NtpServer::new(&source.host, addr, PollConfig::from(&source), now) {
                        Ok(server) => {
                            log::info!("NTP server {} ({addr}) added", source.host);
                            self.servers.push(server);
                        }
                        Err(err) => log::error!("NTP server {}: {}", source.host, Report(&err)),
                    }
                }
                true
            }
            Err(err) if err.is_permanent() => {
                log::error!("{}; line {} ignored", Report(&err), entry.source.line);
                self.unresolved.swap_remove(index);
                true
            }
            Err(err) => {
                let delay = entry.backoff.next_delay();
                log::warn!("{}; retrying in {} s", Report(&err), delay.as_secs());
                entry.next = now + delay.as_secs_f64();
                false
            }
        }
    }

    fn next_deadline(&self) -> f64 {
        let phc = self.phcs.iter().map(|p| p.next);
        let ntp = self.servers.iter().map(NtpServer::next_deadline);
        let resolve = self
            .unresolved
            .iter()
            .map(|u| u.lookup.as_ref().map_or(u.next, |lookup| lookup.deadline()));
        let stale = self.stale_deadline();
        let slew = self.discipline.slew_deadline();
        phc.chain(ntp)
            .chain(resolve)
            .chain(stale)
            .chain(slew)
            .fold(f64::INFINITY, f64::min)
    }

    fn selected_interval(&self) -> Option<f64> {
        match self.selected? {
            SourceId::Phc(i) => self.phcs.get(i).map(|p| p.interval),
            SourceId::Ntp(i) => self.servers.get(i).map(NtpServer::poll_interval),
        }
    }

    fn stale_deadline(&self) -> Option<f64> {
        let last = self.discipline.status().last_update?;
        if !self.discipline.status().synchronised {
            return None;
        }
        let interval = self.selected_interval().unwrap_or(64.0);
        Some(last + (STALE_INTERVALS * interval).max(STALE_MIN))
    }

    fn check_stale(&mut self, now: f64) {
        if self
            .stale_deadline()
            .is_some_and(|deadline| now >= deadline)
        {
            log::warn!("no usable sample for too long: the clock is marked unsynchronised");
            if let Err(err) = self.discipline.mark_unsynchronised(self.clock.as_mut()) {
                log::error!("{err}");
            }
            self.selected = None;
            self.write_status();
        }
    }

    fn on_source_lost(&mut self, id: SourceId) {
        if self.selected == Some(id) {
            self.selected = None;
            let fallback = self.servers.len() + self.unresolved.len();
            if fallback > 0 {
                log::warn!("falling back to {fallback} NTP source(s)");
            } else {
                log::warn!("no other source configured");
            }
            self.write_status();
        }
    }

    /// The source whose samples steer the clock now, and how many of its
    /// samples must agree before a step with no history: a PHC's second
    /// reading confirms its first; an NTP server alone needs three, and
    /// none when a majority of two or more servers agreed.
    fn choose(&self, now: f64) -> Option<(SourceId, u32)> {
        if let Some(i) = self.phcs.iter().position(|p| p.usable(now)) {
            return Some((SourceId::Phc(i), PHC_FIRST_STEP_SAMPLES));
        }
        let measured: Vec<(usize, Candidate)> = self
            .servers
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let m = s.last_measurement()?;
                (now - m.monotonic <= 8.0 * s.poll_interval()).then_some((
                    i,
                    Candidate {
                        offset: m.offset,
                        delay: m.delay,
                        root_distance: m.root_distance(),
                    },
                ))
            })
            .collect();
        let candidates: Vec<Candidate> = measured.iter().map(|(_, c)| *c).collect();
        let selection = ntp::select_sources(&candidates, self.max_distance);
        let agreeing = selection
            .verdicts
            .iter()
            .filter(|v| **v == Verdict::Selected)
            .count();
        let samples = if agreeing >= 2 {
            1
        } else {
            NTP_FIRST_STEP_SAMPLES
        };
        measured
            .iter()
            .zip(&selection.verdicts)
            .filter(|(_, v)| **v == Verdict::Selected)
            .min_by(|((_, a), _), ((_, b), _)| a.error_bound().total_cmp(&b.error_bound()))
            .map(|((i, _), _)| (SourceId::Ntp(*i), samples))
    }

    fn label(&self, id: SourceId) -> String {
        match id {
            SourceId::Phc(i) => self.phcs.get(i).map(PhcSource::label).unwrap_or_default(),
            SourceId::Ntp(i) => self
                .servers
                .get(i)
                .map(|s| format!("NTP {} ({})", s.name(), s.addr()))
                .unwrap_or_default(),
        }
    }

    fn on_sample(&mut self, id: SourceId, sample: Sample) {
        let now = monotonic_now();
        let choice = self.choose(now);
        let chosen = choice.map(|(id, _)| id);
        if chosen != self.selected {
            if let Some(chosen) = chosen {
                log::info!("selected {}", self.label(chosen));
            }
            if let Some(SourceId::Ntp(i)) = self.selected {
                if let Some(server) = self.servers.get_mut(i) {
                    server.release_poll();
                }
            }
            self.selected = chosen;
        }
        if let Some((_, samples)) = choice {
            self.discipline.set_first_step_samples(samples);
        }
        if self.selected != Some(id) {
            return;
        }
        if let Some(interval) = self.selected_interval() {
            self.discipline.set_poll_interval(interval);
        }
        self.last_measured_offset = Some(sample.offset);
        let sample = Sample {
            offset: sample.offset - self.clock.unapplied_correction(sample.monotonic),
            ..sample
        };
        let outcome = match self.discipline.update(self.clock.as_mut(), sample) {
            Ok(outcome) => {
                self.clock_error_reported = false;
                outcome
            }
            Err(err) => {
                if !self.clock_error_reported {
                    log::error!("cannot adjust the clock: {err}");
                    self.clock_error_reported = true;
                }
                return;
            }
        };
        self.set_burst(id, matches!(outcome, Outcome::BurstWanted { .. }), now);
        if let (SourceId::Ntp(i), Outcome::Slewed { .. }) = (id, &outcome) {
            let samples = self.discipline.status().effective_samples;
            if let Some(server) = self.servers.get_mut(i) {
                server.steer_poll(samples);
            }
        }
        match outcome {
            Outcome::Stepped { offset } => {
                log::info!(
                    "stepped the clock by {offset:+.9} s ({})",
                    self.label(id)
                );
                for server in &mut self.servers {
                    server.reset_filter();
                }
                self.synchronised(id, offset);
            }
            Outcome::Slewed { offset, .. } => self.synchronised(id, offset),
            Outcome::BurstWanted { samples } => log::info!(
                "{}: offset {:+.6} s is far from the prediction: taking {samples} more sample(s) now",
                self.label(id),
                sample.offset
            ),
            Outcome::OutlierDropped { dropped } => {
                log::info!("{}: {dropped} outlier sample(s) dropped", self.label(id))
            }
            Outcome::Rejected(why) => log::warn!("{}: sample rejected: {why}", self.label(id)),
            Outcome::Refused { offset, reason } => {
                if !self.refusal_reported {
                    log::error!(
                        "{}: refusing to step the clock by {offset:+.3} s: {reason}; the clock \
                         is left alone (reported once until a sample is used)",
                        self.label(id)
                    );
                    self.refusal_reported = true;
                }
            }
        }
        if matches!(outcome, Outcome::Stepped { .. } | Outcome::Slewed { .. }) {
            self.refusal_reported = false;
        }
        self.write_status();
        // After the status file, so that whoever READY=1 wakes finds it.
        if self.ready_pending {
            self.ready_pending = false;
            if let Some(socket) = &self.options.notify_socket {
                if let Err(err) = minos_common::notify::notify(socket, "READY=1") {
                    log::error!("{}", Report(&err));
                }
            }
        }
    }

    fn set_burst(&mut self, id: SourceId, burst: bool, now: f64) {
        match id {
            SourceId::Phc(i) => {
                if let Some(phc) = self.phcs.get_mut(i) {
                    if burst && !phc.burst {
                        phc.next = now + PHC_BURST_SPACING;
                    }
                    phc.burst = burst;
                }
            }
            SourceId::Ntp(i) => {
                if let Some(server) = self.servers.get_mut(i) {
                    server.set_burst(burst);
                    if burst {
                        server.request_now(now);
                    }
                }
            }
        }
    }

    fn synchronised(&mut self, id: SourceId, offset: f64) {
        if self.notified {
            return;
        }
        self.notified = true;
        log::info!("synchronised to {} (offset {offset:+.9} s)", self.label(id));
        self.ready_pending = true;
    }

    pub fn status(&self) -> Status {
        let d = self.discipline.status();
        let mut reference_id = String::new();
        let (mut root_delay, mut root_dispersion) = (0.0, 0.0);
        let (source, kind, stratum, leap) = match self.selected {
            Some(SourceId::Phc(i)) => {
                // chrony names refclocks PHC0, PHC1, ... by default.
                let name = format!("PHC{i}");
                reference_id = format!("{} ({name})", hex_ref_id(name.as_bytes()));
                // One hop from the reference clock, as chronyc shows it.
                (self.label(SourceId::Phc(i)), "phc", 1, "normal".into())
            }
            Some(SourceId::Ntp(i)) => {
                let server = self.servers.get(i);
                let m = server.and_then(NtpServer::last_measurement);
                if let Some(server) = server {
                    reference_id = ntp_ref_id(server.addr().ip());
                }
                if let Some(m) = m {
                    (root_delay, root_dispersion) = (m.root_delay, m.root_dispersion);
                }
                (
                    self.label(SourceId::Ntp(i)),
                    "ntp",
                    m.map_or(0, |m| m.stratum.saturating_add(1)),
                    m.map_or("unknown", |m| match m.leap {
                        ntp::Leap::None => "normal",
                        ntp::Leap::InsertSecond => "insert",
                        ntp::Leap::DeleteSecond => "delete",
                    })
                    .into(),
                )
            }
            None => (String::new(), "none", 0, "unsynchronised".into()),
        };
        let now = monotonic_now();
        let last_update_unix = d
            .last_update
            .map_or(0.0, |at| realtime_now() - (now - at).max(0.0));
        let mut sources: Vec<SourceStatus> = self
            .phcs
            .iter()
            .map(|p| SourceStatus {
                kind: "phc".into(),
                name: p.config.device.display().to_string(),
                address: p
                    .phc
                    .as_ref()
                    .and_then(|phc| phc.name())
                    .unwrap_or_default()
                    .to_string(),
                state: if p.usable(now) {
                    "ok"
                } else if p.phc.is_some() {
                    "waiting"
                } else {
                    "unavailable"
                }
                .into(),
                reach: 0,
                poll_interval: p.interval,
                offset: p.last.map(|s| s.offset),
                rejected: 0,
                timestamps: String::new(),
            })
            .collect();
        sources.extend(self.servers.iter().map(|s| {
            SourceStatus {
                kind: "ntp".into(),
                name: s.name().into(),
                address: s.addr().to_string(),
                state: "ok".into(),
                reach: s.reach(),
                poll_interval: s.poll_interval(),
                offset: s.last_measurement().map(|m| m.offset),
                rejected: s.counters().total_rejected(),
                timestamps: if s.kernel_timestamps() {
                    "kernel"
                } else {
                    "user"
                }
                .into(),
            }
        }));
        sources.extend(self.unresolved.iter().map(|u| SourceStatus {
            kind: "ntp".into(),
            name: u.source.host.clone(),
            state: "unresolved".into(),
            ..SourceStatus::default()
        }));
        Status {
            version: minos_common::version(),
            mode: self.mode().into(),
            source,
            source_kind: kind.into(),
            reference_id,
            stratum,
            leap,
            synchronised: d.synchronised,
            system_time: d.slew.map_or(0.0, |slew| slew.remaining(now)),
            // Observe-only: what the real clock is off by, not the virtual
            // clock the discipline steers.
            last_offset: if self.options.observe {
                self.last_measured_offset.unwrap_or(d.last_offset)
            } else {
                d.last_offset
            },
            rms_offset: d.rms_offset,
            frequency_ppm: d.frequency_ppm,
            residual_freq_ppm: d.frequency_change_ppm,
            skew_ppm: d.frequency_sd_ppm,
            slew_rate_ppm: d.slew.map_or(0.0, |slew| slew.rate_ppm),
            root_delay,
            root_dispersion,
            poll_interval: self.selected_interval().unwrap_or(0.0),
            last_update_unix,
            samples: d.updates,
            steps: d.steps,
            rejected: d.rejected + d.outliers,
            sources,
        }
    }

    fn write_status(&mut self) {
        let path = &self.options.status_file;
        match status::write(path, &self.status()) {
            Ok(()) => self.status_error_reported = false,
            Err(err) if !self.status_error_reported => {
                log::warn!("cannot write the status file {}: {err}", path.display());
                self.status_error_reported = true;
            }
            Err(_) => {}
        }
    }
}

/// Four bytes as chronyc shows a reference ID: 8 hex digits.
fn hex_ref_id(bytes: &[u8]) -> String {
    bytes.iter().take(4).map(|b| format!("{b:02X}")).collect()
}

/// chronyc's Reference ID of an NTP server: its IPv4 address in hex; for
/// IPv6 chrony hashes the address (MD5), here its first four bytes stand
/// in, with the address beside them either way.
fn ntp_ref_id(ip: std::net::IpAddr) -> String {
    let bytes = match ip {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    format!("{} ({ip})", hex_ref_id(&bytes))
}

/// Arms `timer` for the monotonic time `deadline` (seconds); infinity
/// disarms it.
fn arm(timer: &impl AsFd, deadline: f64) -> rustix::io::Result<()> {
    let value = if deadline.is_finite() {
        // 0 would disarm the timer: a deadline in the past fires at once.
        let at = deadline.max(1e-9);
        Timespec {
            tv_sec: at.trunc() as i64,
            tv_nsec: ((at.fract() * 1e9) as i64).clamp(1, 999_999_999),
        }
    } else {
        Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        }
    };
    let spec = Itimerspec {
        it_interval: Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: value,
    };
    timerfd_settime(timer, TimerfdTimerFlags::ABSTIME, &spec).map(|_| ())
}

/// `--once`: one measurement from each source, printed; `true` when at
/// least one source answered.
pub fn once(config: &Config, extra_servers: &[NtpSource], out: &mut dyn std::io::Write) -> bool {
    let mut any = false;
    for refclock in &config.refclocks {
        let result = Phc::open(&refclock.device)
            .and_then(|mut phc| phc.sample(PHC_READINGS, refclock.offset).map(|s| (phc, s)));
        match result {
            Ok((phc, sample)) => {
                any = true;
                let _ = writeln!(
                    out,
                    "timesync: {} offset={:+.9} delay={:.9} method={}",
                    PhcLabel(&phc),
                    sample.offset,
                    sample.delay,
                    phc.method().map_or("?", |m| m.ioctl())
                );
            }
            Err(err) => log::error!("{}", Report(&err)),
        }
    }
    let resolver = Resolver::default();
    for source in config.ntp_sources.iter().chain(extra_servers) {
        let addrs = match resolver.resolve_source(source) {
            Ok(addrs) => addrs,
            Err(err) => {
                log::error!("{}", Report(&err));
                continue;
            }
        };
        for addr in addrs {
            match ntp::measure_once(addr, Duration::from_secs(2)) {
                Ok(m) => {
                    any = true;
                    let _ = writeln!(
                        out,
                        "timesync: NTP {} ({addr}) offset={:+.9} delay={:.9} stratum={}",
                        source.host, m.offset, m.delay, m.stratum
                    );
                }
                Err(err) => log::error!("NTP {} ({addr}): {}", source.host, Report(&err)),
            }
        }
    }
    any
}

/// `timesync.*` keys of the kernel command line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CmdlineKeys {
    pub observe: bool,
    pub config: Option<PathBuf>,
    pub servers: Vec<NtpSource>,
    /// `timesync.max_step=SECONDS`.
    pub max_step: Option<f64>,
}

/// Parses `timesync.observe`, `timesync.config=PATH`,
/// `timesync.server=HOST` (repeatable) and `timesync.max_step=SECONDS`
/// from a kernel command line; other `timesync.*` keys, and bad values,
/// are reported and ignored.
pub fn parse_cmdline(text: &str) -> CmdlineKeys {
    let mut keys = CmdlineKeys::default();
    for param in minos_common::cmdline::params(text) {
        let word = param.word;
        let Some(rest) = param.key.strip_prefix("timesync.") else {
            continue;
        };
        // The kernel's rule: `-` and `_` are the same in a key.
        let key = rest.replace('-', "_");
        let value = param.value;
        match (key.as_str(), value) {
            ("observe", v) => match minos_common::cmdline::flag(v) {
                Some(on) => keys.observe = on,
                None => log::warn!(
                    "kernel command line: `{word}`: not a boolean (1, yes, on, 0, no, off …), \
                     ignored"
                ),
            },
            ("config", Some(path)) if path.starts_with('/') => keys.config = Some(path.into()),
            ("server", Some(host)) if !host.is_empty() => keys.servers.push(NtpSource {
                line: 0,
                kind: NtpSourceKind::Server,
                host: host.to_owned(),
                iburst: true,
                minpoll: crate::config::DEFAULT_MINPOLL,
                maxpoll: crate::config::DEFAULT_MAXPOLL,
                port: crate::config::DEFAULT_NTP_PORT,
                polltarget: crate::config::DEFAULT_POLL_TARGET,
            }),
            ("max_step", Some(value)) => match value.parse::<f64>() {
                Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => {
                    keys.max_step = Some(seconds)
                }
                _ => log::warn!(
                    "kernel command line: `{word}`: not a number of seconds, ignored (no limit)"
                ),
            },
            _ => log::warn!("kernel command line: `{word}` not understood, ignored"),
        }
    }
    keys
}

/// Reads the kernel command line (`None` when it cannot be read).
pub fn read_cmdline(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_keys() {
        let keys = parse_cmdline(
            "quiet timesync.observe timesync.config=/etc/t.conf timesync.server=10.0.0.1 \
             timesync.server=ntp.example timesync.bogus=1 timesync.config=relative agent.x=1",
        );
        assert!(keys.observe);
        assert_eq!(keys.config, Some(PathBuf::from("/etc/t.conf")));
        let hosts: Vec<&str> = keys.servers.iter().map(|s| s.host.as_str()).collect();
        assert_eq!(hosts, ["10.0.0.1", "ntp.example"]);
        assert!(keys.servers.iter().all(|s| s.iburst && s.port == 123));
        assert_eq!(parse_cmdline("timesync.observe=0"), CmdlineKeys::default());
        // The kernel's splitting and the one boolean grammar.
        assert!(parse_cmdline("timesync.observe=Y").observe);
        assert!(!parse_cmdline("timesync.observe timesync.observe=off").observe);
        assert!(parse_cmdline("timesync.observe=maybe").observe == CmdlineKeys::default().observe);
        assert_eq!(
            parse_cmdline("\"timesync.config=/etc/t s.conf\"").config,
            Some(PathBuf::from("/etc/t s.conf"))
        );
        assert_eq!(parse_cmdline("timesync.max-step=5").max_step, Some(5.0));
        assert_eq!(parse_cmdline(""), CmdlineKeys::default());
        assert_eq!(
            parse_cmdline("timesync.max_step=3600").max_step,
            Some(3600.0)
        );
        assert_eq!(parse_cmdline("timesync.max_step=0.5").max_step, Some(0.5));
        for bad in [
            "timesync.max_step",
            "timesync.max_step=-1",
            "timesync.max_step=inf",
            "timesync.max_step=x",
        ] {
            assert_eq!(parse_cmdline(bad).max_step, None, "{bad}");
        }
    }

    #[test]
    fn phc_interval_from_poll_and_dpoll() {
        let (config, _) =
            crate::config::parse_config("refclock PHC /dev/ptp0 poll 3 dpoll -2 offset 0");
        let Some(refclock) = config.refclocks.first() else {
            panic!("no refclock")
        };
        // Kata's line: one sample per second (not four), every one used.
        assert_eq!(PhcSource::new(refclock.clone(), 0.0).interval, 1.0);
        let (config, _) = crate::config::parse_config("refclock PHC /dev/ptp1 poll 4 dpoll 2");
        let Some(refclock) = config.refclocks.first() else {
            panic!("no refclock")
        };
        assert_eq!(PhcSource::new(refclock.clone(), 0.0).interval, 4.0);
        let (config, _) = crate::config::parse_config("refclock PHC /dev/ptp1 poll 1 dpoll 3");
        let Some(refclock) = config.refclocks.first() else {
            panic!("no refclock")
        };
        assert_eq!(PhcSource::new(refclock.clone(), 0.0).interval, 2.0);
    }

    #[test]
    fn missing_phc_is_retried_with_backoff_and_reported_once() {
        let (config, _) = crate::config::parse_config("refclock PHC /nonexistent/ptp9");
        let Some(refclock) = config.refclocks.first() else {
            panic!("no refclock")
        };
        let mut source = PhcSource::new(refclock.clone(), 100.0);
        assert!(source.sample(100.0, None).is_none());
        assert!(source.failure_reported);
        assert_eq!(source.next, 102.0);
        assert!(source.sample(102.0, None).is_none());
        assert_eq!(source.next, 106.0);
        for _ in 0..10 {
            let now = source.next;
            assert!(source.sample(now, None).is_none());
        }
        assert_eq!(source.retry, PHC_RETRY_MAX);
        assert!(!source.usable(source.next));
    }

    #[test]
    fn timer_arming() {
        let timer = timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::NONBLOCK).unwrap();
        arm(&timer, f64::INFINITY).unwrap();
        arm(&timer, 0.0).unwrap();
        let mut buf = [0u8; 8];
        // A deadline in the past fires at once.
        std::thread::sleep(Duration::from_millis(1));
        assert_eq!(rustix::io::read(&timer, &mut buf), Ok(8));
        arm(&timer, monotonic_now() + 3600.0).unwrap();
        assert_eq!(
            rustix::io::read(&timer, &mut buf),
            Err(rustix::io::Errno::AGAIN)
        );
    }
}
