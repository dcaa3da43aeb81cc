//! In-process counters for the embedded mode: one map of counters behind one
//! mutex. Every admission, settlement and release runs entirely under the
//! lock, which is what makes all-or-nothing admission exact; the work under it
//! is a handful of hash lookups, so the lock is held for well under a
//! microsecond.
//!
//! Counters whose window is over and that hold no reservation are swept out
//! (at most once a minute, on admission), so old windows do not hold memory.

use super::{
    AdmitError, Consumption, CounterError, Counters, Held, Place, ReleaseOnDrop, Reservation, RestoreTurn, MAX_CHECKS,
};
use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use foldhash::HashMap;
use parking_lot::Mutex;
use std::sync::Arc;
use tollgate_core::admission::{
    Actual, AlertEvent, Alerted, CounterKey, Counts, Demand, LimitCheck, LimitId, Plan, RateHeaders, Rule, Window,
};
use tollgate_core::limits::Amount;

/// How often old windows are swept out.
const SWEEP_EVERY: Duration = Duration::seconds(60);

/// Limit counters held in this process.
#[derive(Clone, Default)]
pub struct MemoryCounters {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    cells: HashMap<CounterKey, Cell>,
    /// When to next sweep out ended windows; `None` until the first admission.
    next_sweep: Option<DateTime<Utc>>,
}

/// One counter.
#[derive(Debug, Clone, Copy)]
struct Cell {
    counts: Counts,
    /// When the window ends; the counter may go once this has passed and it
    /// holds no reservation.
    end: Option<DateTime<Utc>>,
    alerted: Alerted,
}

impl Cell {
    fn new(window: &Window) -> Cell {
        Cell {
            counts: Counts::default(),
            end: window.end,
            alerted: Alerted::default(),
        }
    }
}

impl std::fmt::Debug for MemoryCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCounters")
            .field("counters", &self.counter_count())
            .finish()
    }
}

impl MemoryCounters {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many counters are held (for tests and metrics).
    pub fn counter_count(&self) -> usize {
        self.inner.state.lock().cells.len()
    }

    /// [`Counters::admit`] without the async wrapper.
    pub fn admit_now(
        &self,
        now: DateTime<Utc>,
        checks: &[LimitCheck],
        demand: Demand,
    ) -> Result<Reservation, AdmitError> {
        if checks.len() > MAX_CHECKS {
            return Err(CounterError::TooManyChecks(checks.len()).into());
        }
        // Worked out before taking the lock, to keep the lock short.
        let mut plans: [Option<Plan>; MAX_CHECKS] = Default::default();
        for (slot, check) in plans.iter_mut().zip(checks) {
            *slot = Some(Plan::new(check, now, &demand));
        }
        let mut headers = RateHeaders::default();
        {
            let mut st = self.inner.state.lock();
            st.maybe_sweep(now);
            for (i, plan) in plans.iter().enumerate() {
                let Some(plan) = plan else { break };
                let cell = st
                    .cells
                    .entry(plan.key.clone())
                    .or_insert_with(|| Cell::new(&plan.window));
                if !plan.fits(cell.counts) {
                    let mut refusal = plan.refusal(cell.counts, now);
                    // All or nothing: take back what the earlier checks took.
                    for earlier in plans[..i].iter().flatten() {
                        if let Some(c) = st.cells.get_mut(&earlier.key) {
                            earlier.unapply(&mut c.counts);
                        }
                    }
                    // The figures of every rate limit that applies, as they
                    // stand with nothing taken.
                    for p in plans.iter().flatten() {
                        let counts = st.cells.get(&p.key).map(|c| c.counts).unwrap_or_default();
                        p.add_headers(&mut refusal.headers, counts, now);
                    }
                    return Err(refusal.into());
                }
                plan.apply(&mut cell.counts);
                plan.add_headers(&mut headers, cell.counts, now);
            }
        }
        let mut held: [Option<Held>; MAX_CHECKS] = Default::default();
        let mut n = 0;
        for (index, plan) in plans.into_iter().flatten().enumerate() {
            // A request-rate limit has nothing left to settle or release.
            if !plan.key.measure.reserves() {
                continue;
            }
            let marks = plan.budget();
            held[n] = Some(Held {
                key: plan.key,
                level: plan.level,
                reserved: plan.reserve,
                marks,
                index,
            });
            n += 1;
        }
        Ok(Reservation::new(held, headers, None, self.inner.clone()))
    }

    /// [`Counters::settle`] without the async wrapper.
    pub fn settle_now(&self, mut reservation: Reservation, actual: Actual) -> Result<Vec<AlertEvent>, CounterError> {
        if !reservation.is_owned_by(self.owner_ptr()) {
            return Err(CounterError::ForeignReservation);
        }
        let (held, _) = reservation.close();
        let mut events = Vec::new();
        let mut st = self.inner.state.lock();
        for h in held.iter().flatten() {
            // Gone only if the limit was forgotten meanwhile: nothing to count.
            let Some(cell) = st.cells.get_mut(&h.key) else { continue };
            cell.counts.reserved = cell.counts.reserved.saturating_sub(h.reserved).max(0);
            let before = cell.counts.consumed;
            cell.counts.consumed = before.saturating_add(h.key.measure.settled(&actual));
            if let Some(marks) = h.marks {
                for kind in marks
                    .crossed(before, cell.counts.consumed, &mut cell.alerted)
                    .into_iter()
                    .flatten()
                {
                    events.push(AlertEvent {
                        id: h.key.id.clone(),
                        level: h.level,
                        kind,
                        consumed: cell.counts.consumed,
                        limit: marks.credit_limit,
                        period_start: h.key.start,
                    });
                }
            }
        }
        Ok(events)
    }

    /// [`Counters::release`] without the async wrapper.
    pub fn release_now(&self, mut reservation: Reservation) -> Result<(), CounterError> {
        if !reservation.is_owned_by(self.owner_ptr()) {
            return Err(CounterError::ForeignReservation);
        }
        let (held, _) = reservation.close();
        self.inner.release_dropped(&held, None);
        Ok(())
    }

    fn owner_ptr(&self) -> *const () {
        Arc::as_ptr(&self.inner) as *const ()
    }

    fn key(id: &LimitId, rule: &Rule, now: DateTime<Utc>) -> CounterKey {
        CounterKey::new(id.clone(), rule, now)
    }
}

impl State {
    fn maybe_sweep(&mut self, now: DateTime<Utc>) {
        if self.next_sweep.is_some_and(|at| now < at) {
            return;
        }
        self.cells
            .retain(|_, c| c.counts.reserved > 0 || c.end.is_none_or(|end| end > now));
        self.next_sweep = Some(now + SWEEP_EVERY);
    }
}

impl ReleaseOnDrop for Inner {
    fn release_dropped(&self, held: &[Option<Held>; MAX_CHECKS], _: Option<&Place>) {
        let mut st = self.state.lock();
        for h in held.iter().flatten() {
            if let Some(cell) = st.cells.get_mut(&h.key) {
                cell.counts.reserved = cell.counts.reserved.saturating_sub(h.reserved).max(0);
            }
        }
    }
}

#[async_trait]
impl Counters for MemoryCounters {
    async fn admit(
        &self,
        now: DateTime<Utc>,
        _group: &str,
        checks: &[LimitCheck],
        demand: Demand,
    ) -> Result<Reservation, AdmitError> {
        self.admit_now(now, checks, demand)
    }

    async fn settle(&self, reservation: Reservation, actual: Actual) -> Result<Vec<AlertEvent>, CounterError> {
        self.settle_now(reservation, actual)
    }

    async fn release(&self, reservation: Reservation) -> Result<(), CounterError> {
        self.release_now(reservation)
    }

    async fn status(
        &self,
        _group: &str,
        id: &LimitId,
        rule: &Rule,
        now: DateTime<Utc>,
    ) -> Result<Consumption, CounterError> {
        let key = Self::key(id, rule, now);
        let counts = self
            .inner
            .state
            .lock()
            .cells
            .get(&key)
            .map(|c| c.counts)
            .unwrap_or_default();
        Ok(Consumption {
            consumed: counts.consumed,
            reserved: counts.reserved,
            limit: rule.limit(),
            window: Window::of(rule, now),
        })
    }

    async fn reset(&self, _group: &str, id: &LimitId, rule: &Rule, now: DateTime<Utc>) -> Result<(), CounterError> {
        let key = Self::key(id, rule, now);
        if let Some(cell) = self.inner.state.lock().cells.get_mut(&key) {
            cell.counts.consumed = 0;
            cell.alerted = Alerted::default();
        }
        Ok(())
    }

    async fn restore(
        &self,
        _group: &str,
        id: &LimitId,
        rule: &Rule,
        now: DateTime<Utc>,
        consumed: Amount,
    ) -> Result<(), CounterError> {
        let key = Self::key(id, rule, now);
        let window = Window::of(rule, now);
        let consumed = consumed.max(0);
        let alerted = rule.marks().map_or_else(Alerted::default, |m| m.passed(consumed));
        let mut st = self.inner.state.lock();
        let cell = st.cells.entry(key).or_insert_with(|| Cell::new(&window));
        cell.counts.consumed = consumed;
        cell.alerted = alerted;
        Ok(())
    }

    async fn forget(&self, _group: &str, id: &LimitId) -> Result<(), CounterError> {
        self.inner.state.lock().cells.retain(|k, _| k.id != *id);
        Ok(())
    }

    async fn begin_restore(&self, _group: &str) -> Result<RestoreTurn, CounterError> {
        Ok(RestoreTurn::Ours)
    }

    async fn restored(&self, _group: &str) -> Result<(), CounterError> {
        Ok(())
    }
}
