//! Per-tenant fairness of starts: no tenant takes more than its share of a minute's starts
//! while another tenant's run is due in that minute (due: from its nominal minute until the
//! minute it starts). A tenant of weight `w` may take `max_share × w` of a minute's starts,
//! rounded up (at most all of them, and always at least one start).
//!
//! [`audit`] measures a placement against the rule; [`repair`] changes offsets until it holds
//! (or its rounds are spent): it first starts the other tenants' waiting runs in the offending
//! minute — they are due, so starting them is fair and never early — then moves the offending
//! tenant's surplus starts to the next minute of their windows.
//!
//! Memory is a few arrays of the horizon's minutes plus one list of item indices per tenant,
//! so it holds for a million schedules.

use crate::placement::Item;
use std::collections::HashMap;

/// The fairness rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fairness {
    /// Share of a minute's starts a tenant of weight 1 may take while others wait.
    pub max_share: f64,
    /// Repair rounds.
    pub rounds: u32,
}

impl Default for Fairness {
    fn default() -> Self {
        Fairness { max_share: 0.5, rounds: 8 }
    }
}

/// How a placement measures against the rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Audit {
    /// (tenant, minute) pairs over the tenant's cap while another tenant's run was due.
    pub violations: usize,
    /// The highest share of a minute's starts one tenant took while another tenant's run was
    /// due in that minute (minutes with at least 10 starts).
    pub max_tenant_share: f64,
}

/// Items grouped by tenant.
struct Tenants {
    items: Vec<Vec<usize>>,
    weight: Vec<f64>,
}

impl Tenants {
    fn new(items: &[Item]) -> Self {
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut tenants = Tenants { items: Vec::new(), weight: Vec::new() };
        for (i, item) in items.iter().enumerate() {
            let t = *index.entry(&item.key.tenant_id).or_insert_with(|| {
                tenants.items.push(Vec::new());
                tenants.weight.push(f64::from(item.weight));
                tenants.items.len() - 1
            });
            tenants.items[t].push(i);
        }
        tenants
    }
}

/// Minute of a second.
fn minute(s: u32) -> usize {
    (s / 60) as usize
}

/// One tenant over its cap in one minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Violation {
    minute: usize,
    tenant: usize,
    surplus: u32,
}

impl Fairness {
    /// How many starts a tenant of `weight` may take in a minute of `total` starts.
    fn allowed(&self, weight: f64, total: u32) -> u32 {
        let share = (self.max_share * weight).min(1.0);
        ((share * f64::from(total)).ceil() as u32).max(1)
    }

    /// Every violation of the rule, and the worst share seen where others were waiting.
    fn check(&self, items: &[Item], offsets: &[u32], tenants: &Tenants) -> (Vec<Violation>, f64) {
        let minutes = items
            .iter()
            .zip(offsets)
            .filter_map(|(i, o)| i.nominal_s.last().map(|n| minute(n + o) + 2))
            .max()
            .unwrap_or(0);
        // All tenants: starts and runs due per minute.
        let (mut starts, mut due) = (vec![0u32; minutes], vec![0i64; minutes]);
        for (item, &o) in items.iter().zip(offsets) {
            for &n in item.nominal_s.iter() {
                starts[minute(n + o)] += 1;
                due[minute(n)] += 1;
                due[minute(n + o) + 1] -= 1;
            }
        }
        prefix_sum(&mut due);
        // Each tenant against the others, on reused arrays.
        let (mut own_starts, mut own_due) = (vec![0u32; minutes], vec![0i64; minutes]);
        let mut violations = Vec::new();
        let mut worst = 0.0f64;
        for (t, members) in tenants.items.iter().enumerate() {
            own_starts.fill(0);
            own_due.fill(0);
            let (mut lo, mut hi) = (usize::MAX, 0);
            for &i in members {
                for &n in items[i].nominal_s.iter() {
                    let (first, start) = (minute(n), minute(n + offsets[i]));
                    own_starts[start] += 1;
                    own_due[first] += 1;
                    own_due[start + 1] -= 1;
                    (lo, hi) = (lo.min(first), hi.max(start + 1));
                }
            }
            if lo > hi {
                continue;
            }
            prefix_sum(&mut own_due[lo..=hi]);
            for m in lo..hi {
                let (s, total) = (own_starts[m], starts[m]);
                if s == 0 || due[m] <= own_due[m] {
                    continue; // no start, or nobody else waiting
                }
                if total >= 10 {
                    worst = worst.max(f64::from(s) / f64::from(total));
                }
                let allowed = self.allowed(tenants.weight[t], total);
                if s > allowed {
                    violations.push(Violation { minute: m, tenant: t, surplus: s - allowed });
                }
            }
        }
        violations.sort_unstable();
        (violations, worst)
    }
}

fn prefix_sum(values: &mut [i64]) {
    let mut level = 0;
    for v in values {
        level += *v;
        *v = level;
    }
}

/// Measures `offsets` (whole seconds, one per item) against the rule.
pub fn audit(rule: &Fairness, items: &[Item], offsets: &[u32]) -> Audit {
    let (violations, worst) = rule.check(items, offsets, &Tenants::new(items));
    Audit { violations: violations.len(), max_tenant_share: worst }
}

/// Changes `offsets` (whole seconds inside each item's window) until the rule holds or the
/// rounds are spent. Returns the audit before and after.
pub fn repair(rule: &Fairness, items: &[Item], offsets: &mut [u32]) -> (Audit, Audit) {
    let tenants = Tenants::new(items);
    let mut tenant_of = vec![0usize; items.len()];
    for (t, members) in tenants.items.iter().enumerate() {
        for &i in members {
            tenant_of[i] = t;
        }
    }
    let (mut violations, worst) = rule.check(items, offsets, &tenants);
    let before = Audit { violations: violations.len(), max_tenant_share: worst };
    let mut after = before;
    for _round in 0..rule.rounds {
        if violations.is_empty() {
            break;
        }
        // 1. Start some of the other tenants' waiting runs in each offending minute, enough
        //    to bring the offender within its share: those that would start soonest anyway,
        //    so that little load moves. An item moves earlier, never before its nominal time.
        let minutes = violations.iter().map(|v| v.minute).max().unwrap_or(0) + 1;
        let mut offenders: Vec<Vec<usize>> = vec![Vec::new(); minutes];
        for v in &violations {
            offenders[v.minute].push(v.tenant);
        }
        let mut waiting: HashMap<usize, Vec<(u32, usize, u32)>> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            for &n in item.nominal_s.iter() {
                let (first, start) = (minute(n), minute(n + offsets[i]));
                for (m, offending) in offenders.iter().enumerate().take(start).skip(first) {
                    if !offending.is_empty() && !offending.contains(&tenant_of[i]) {
                        waiting.entry(m).or_default().push((n + offsets[i] - m as u32 * 60, i, n));
                    }
                }
            }
        }
        let mut pulled = vec![false; items.len()];
        for v in &violations {
            let Some(runs) = waiting.get_mut(&v.minute) else { continue };
            // Each start of another tenant raises the offender's allowance by its share.
            let share = (rule.max_share * tenants.weight[v.tenant]).min(1.0);
            let mut need = (f64::from(v.surplus) / share).ceil() as u32;
            runs.sort_unstable();
            for &(_, i, n) in runs.iter() {
                if need == 0 {
                    break;
                }
                if pulled[i] {
                    continue;
                }
                let target = (v.minute as u32 * 60).saturating_sub(n);
                if target < offsets[i] {
                    offsets[i] = target;
                    pulled[i] = true;
                    need -= 1;
                }
            }
        }
        // 2. Move the surplus of each offender that remains to the next minute.
        let (remaining, _) = rule.check(items, offsets, &tenants);
        for v in &remaining {
            let mut surplus = v.surplus;
            for &i in tenants.items[v.tenant].iter().rev() {
                if surplus == 0 {
                    break;
                }
                let item = &items[i];
                let window = item.window.as_secs() as u32;
                let Some(&n) = item.nominal_s.iter().find(|&&n| minute(n + offsets[i]) == v.minute) else {
                    continue;
                };
                let later = (v.minute as u32 + 1) * 60 - n;
                if later < window {
                    offsets[i] = later;
                    surplus -= 1;
                }
            }
        }
        let (next, worst) = rule.check(items, offsets, &tenants);
        after = Audit { violations: next.len(), max_tenant_share: worst };
        violations = next;
    }
    (before, after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::ScheduleKey;
    use std::sync::Arc;
    use std::time::Duration;

    fn item(tenant: &str, q: usize, nominal: &Arc<Vec<u32>>, window_s: u64) -> Item {
        Item {
            key: ScheduleKey {
                tenant_id: Arc::from(tenant),
                app_id: Arc::from("a"),
                query_id: Arc::from(format!("q{q}")),
            },
            nominal_s: nominal.clone(),
            window: Duration::from_secs(window_s),
            duration: Duration::from_secs(20),
            weight: 1.0,
        }
    }

    /// One tenant with 600 hourly queries and three with 5 each, all at minute 0 with a
    /// 30-minute window; the big tenant's queries spread evenly, the small ones late.
    fn skewed() -> (Vec<Item>, Vec<u32>) {
        let hourly: Arc<Vec<u32>> = Arc::new((0..4).map(|h| h * 3600).collect());
        let mut items = Vec::new();
        let mut offsets = Vec::new();
        for q in 0..600 {
            items.push(item("big", q, &hourly, 1800));
            offsets.push((q as u32 * 3) % 1800);
        }
        for t in ["s1", "s2", "s3"] {
            for q in 0..5 {
                items.push(item(t, q, &hourly, 1800));
                offsets.push(1500 + q as u32 * 10);
            }
        }
        (items, offsets)
    }

    #[test]
    fn a_big_tenant_that_starts_alone_while_small_ones_wait_is_a_violation() {
        let (items, offsets) = skewed();
        let audit = audit(&Fairness::default(), &items, &offsets);
        // Minutes 0..25 of each of the 4 hours: the big tenant takes every start.
        assert!(audit.violations >= 4 * 25, "{audit:?}");
        assert_eq!(audit.max_tenant_share, 1.0);
    }

    #[test]
    fn repair_lets_the_waiting_tenants_start_and_keeps_every_run_in_its_window() {
        let (items, mut offsets) = skewed();
        let rule = Fairness::default();
        let (before, after) = repair(&rule, &items, &mut offsets);
        assert!(before.violations > 0);
        assert_eq!(after.violations, 0, "{after:?}");
        assert_eq!(after, audit(&rule, &items, &offsets));
        for (item, o) in items.iter().zip(&offsets) {
            assert!(u64::from(*o) < item.window.as_secs(), "offset {o} outside the window");
        }
        // The small tenants now start in the first minute, beside the big one.
        let small: Vec<u32> = offsets[600..].to_vec();
        assert!(small.iter().all(|&o| o < 60), "{small:?}");
    }

    #[test]
    fn a_weight_raises_a_tenants_cap() {
        let (mut items, offsets) = skewed();
        for item in &mut items[..600] {
            item.weight = 2.0;
        }
        // Weight 2 at max_share 0.5: the big tenant may take every start.
        assert_eq!(audit(&Fairness::default(), &items, &offsets).violations, 0);
    }
}
