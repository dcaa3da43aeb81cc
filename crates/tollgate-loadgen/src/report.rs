//! The human-readable side of a run: one line per step while it runs, and
//! the final table (the same figures as the JSON).

use crate::bench::{ReferenceStep, Report, RoutingRound, Spread, StepReport};
use crate::scaleout::ScaleoutStep;
use std::fmt::Write;

/// One line per finished step, printed as the run goes.
pub fn step_line(r: &StepReport) -> String {
    let mut line = format!(
        "{:>6.0} req/s {:<6}  direct p99 {:>7.2} ms  tollgate p99 {:>7.2} ms  added p50/p99 {:>6.2}/{:>6.2} ms  ok {:>6.2}%  cpu {:.3} ms/req  hwm {:.1} MB  other cpu {:.1} s",
        r.rate,
        r.mode.name(),
        r.direct.latency_ms.p99,
        r.tollgate.latency_ms.p99,
        r.added_ms.p50,
        r.added_ms.p99,
        r.tollgate.success_rate * 100.0,
        r.tollgate_cpu_ms_per_1000_requests / 1000.0,
        r.tollgate_peak_rss_mb,
        r.other_processes_cpu_s,
    );
    if let Some(n) = &r.reference {
        let _ = write!(
            line,
            "  | nginx added p50/p99 {:.2}/{:.2} ms cpu {:.3} ms/req (tollgate {}x)",
            n.added_ms.p50,
            n.added_ms.p99,
            n.cpu_ms_per_1000_requests / 1000.0,
            ratio(n.tollgate_cpu_ratio),
        );
    }
    line
}

/// One line per finished scale-out step.
pub fn scaleout_line(r: &ScaleoutStep) -> String {
    format!(
        "scaleout {} replica(s) {:>6.0} req/s {:<6}  direct p99 {:>7.2} ms  through p99 {:>7.2} ms  added p50/p99 {:>6.2}/{:>6.2} ms  two redis round trips alone p50/p99 {:.2}/{:.2} ms  ok {:>6.2}%  cpu {:.3} ms/req (pg {:.3}, redis {:.3})  redis round trips/req {:.2}  other cpu {:.1} s  cpus busy {}%",
        r.replicas,
        r.rate,
        r.mode.name(),
        r.direct.latency_ms.p99,
        r.through.latency_ms.p99,
        r.added_ms.p50,
        r.added_ms.p99,
        r.redis_floor.latency_ms.p50,
        r.redis_floor.latency_ms.p99,
        r.through.success_rate * 100.0,
        r.cpu_ms_per_1000_requests / 1000.0,
        r.postgres_all_cpu_ms_per_1000_requests / 1000.0,
        r.redis_cpu_ms_per_1000_requests / 1000.0,
        r.redis_round_trips_per_request,
        r.other_processes_cpu_s,
        list(&r.cpu_busy_percent, 0),
    )
}

fn list(v: &[f64], digits: usize) -> String {
    v.iter().map(|x| format!("{x:.digits$}")).collect::<Vec<_>>().join(", ")
}

/// The scale-out scenario's table.
fn scaleout_table(s: &mut String, report: &Report) {
    let Some(r) = &report.scaleout else { return };
    let _ = writeln!(
        s,
        "\nScale-out: replicas on PostgreSQL + Redis (database {}, dropped; {} Redis keys deleted), requests spread over the replicas in turn:\n",
        r.database, r.cleanup.redis_keys_deleted
    );
    let _ = writeln!(
        s,
        "| replicas | rate (req/s) | mode | direct p50 / p90 / p99 (ms) | through p50 / p90 / p99 (ms) | added p50 / p90 / p99 (ms) | two Redis round trips alone, p50 / p90 / p99 (ms) | errors | CPU per 1,000 req, all replicas (ms) | per replica (ms) | PostgreSQL CPU per 1,000 req (ms; our backends, s) | Redis CPU per 1,000 req (ms) | Redis round trips (commands) per req | peak RSS per replica (MB) | other CPU (s) | each CPU busy (%) |"
    );
    let _ = writeln!(
        s,
        "|---:|---:|---|---|---|---|---|---:|---:|---|---|---:|---:|---|---:|---|"
    );
    let three = |p: &crate::load::Percentiles| format!("{:.2} / {:.2} / {:.2}", p.p50, p.p90, p.p99);
    for x in &r.steps {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {} | {} | {:.2} / {:.2} / {:.2} | {} | {} | {:.1} | {} | {:.1} ({:.2} s) | {:.1} | {:.2} ({:.1}) | {} | {:.1} | {} |",
            x.replicas,
            x.rate,
            x.mode.name(),
            three(&x.direct.latency_ms),
            three(&x.through.latency_ms),
            x.added_ms.p50,
            x.added_ms.p90,
            x.added_ms.p99,
            three(&x.redis_floor.latency_ms),
            x.through.errors,
            x.cpu_ms_per_1000_requests,
            list(&x.replica_cpu_ms_per_1000_requests, 1),
            x.postgres_all_cpu_ms_per_1000_requests,
            x.postgres_backends_cpu_s,
            x.redis_cpu_ms_per_1000_requests,
            x.redis_round_trips_per_request,
            x.redis_calls_per_request,
            list(&x.replica_peak_rss_mb, 1),
            x.other_processes_cpu_s,
            list(&x.cpu_busy_percent, 0),
        );
    }
}

/// One line per finished routing round.
pub fn routing_line(n: usize, r: &RoutingRound) -> String {
    format!(
        "routing round {n}: p50/p99 ms  direct {:.3}/{:.3}  no config {:.3}/{:.3}  single {:.3}/{:.3}  failed direct {:.3}/{:.3}  failed through {:.3}/{:.3}  fallback {:.3}/{:.3}  -> single-none {:+.3}/{:+.3}  hop {:+.3}/{:+.3}  other cpu {:.1} s",
        r.direct.latency_ms.p50,
        r.direct.latency_ms.p99,
        r.no_config.latency_ms.p50,
        r.no_config.latency_ms.p99,
        r.single.latency_ms.p50,
        r.single.latency_ms.p99,
        r.failed_direct.latency_ms.p50,
        r.failed_direct.latency_ms.p99,
        r.failed_through.latency_ms.p50,
        r.failed_through.latency_ms.p99,
        r.fallback.latency_ms.p50,
        r.fallback.latency_ms.p99,
        r.single_vs_no_config_ms.p50,
        r.single_vs_no_config_ms.p99,
        r.hop_ms.p50,
        r.hop_ms.p99,
        r.other_processes_cpu_s,
    )
}

fn range(s: &Spread) -> String {
    format!(
        "{:.3} ({:.3} … {:.3}) | {:.3} ({:.3} … {:.3})",
        s.p50.median, s.p50.min, s.p50.max, s.p99.median, s.p99.min, s.p99.max
    )
}

/// The routing scenario's tables.
fn routing_table(s: &mut String, report: &Report) {
    let Some(r) = &report.routing else { return };
    let _ = writeln!(
        s,
        "\nRouting, {:.0} req/s per step, non-streaming, {} round(s), steps {}; latency p50 / p99 (ms), each step's own:\n",
        r.rate,
        r.rounds.len(),
        if r.together { "at the same time" } else { "back to back" }
    );
    let _ = writeln!(
        s,
        "| round | direct | no config | single config | failed, direct | failed, through | fallback (fail → ok) | other CPU (s) |"
    );
    let _ = writeln!(s, "|---:|---|---|---|---|---|---|---:|");
    let two = |p: &crate::load::Percentiles| format!("{:.3} / {:.3}", p.p50, p.p99);
    for (i, x) in r.rounds.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} |",
            i + 1,
            two(&x.direct.latency_ms),
            two(&x.no_config.latency_ms),
            two(&x.single.latency_ms),
            two(&x.failed_direct.latency_ms),
            two(&x.failed_through.latency_ms),
            two(&x.fallback.latency_ms),
            x.other_processes_cpu_s,
        );
    }
    if let Some(sum) = &r.summary {
        let _ = writeln!(
            s,
            "\nAcross rounds, median (lowest … highest), ms:\n\n| figure | p50 | p99 |\n|---|---|---|"
        );
        for (name, sp) in [
            ("no config − direct (what the gateway adds)", &sum.no_config_added_ms),
            ("single config − no config", &sum.single_vs_no_config_ms),
            ("fallback hop = fallback − no config − failed direct", &sum.hop_ms),
            (
                "fallback − no config − failed through Tollgate",
                &sum.hop_vs_failed_through_ms,
            ),
        ] {
            let _ = writeln!(s, "| {name} | {} |", range(sp));
        }
    }
}

/// The final table, as Markdown (it is pasted into docs/PERFORMANCE.md).
pub fn table(report: &Report) -> String {
    let mut s = String::new();
    if !report.steps.is_empty() {
        gateway_table(&mut s, report);
    }
    routing_table(&mut s, report);
    scaleout_table(&mut s, report);
    if let Some(search) = &report.search {
        let _ = writeln!(
            s,
            "\nHighest sustained rate ({}): {} (lowest failing: {}; {} probes; stopped: {})",
            search.criterion,
            search
                .max_sustained_rps
                .map_or("none".into(), |r| format!("{r:.0} req/s")),
            search
                .lowest_failing_rps
                .map_or("none probed".into(), |r| format!("{r:.0} req/s")),
            search.probes.len(),
            search.stopped_because,
        );
    }
    reference_table(&mut s, report);
    let _ = writeln!(s, "\nTargets:\n");
    for t in &report.targets {
        let verdict = match t.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        let value = t.value.map_or("-".into(), |v| format!("{v:.3}"));
        let _ = writeln!(s, "- {}: {} (limit {}): {}", t.name, value, t.limit, verdict);
    }
    let floor = reference_figures(&report.steps);
    if !floor.is_empty() {
        let _ = writeln!(s, "\nThe same figures through the reference proxy (nginx), same run:\n");
        for line in floor {
            let _ = writeln!(s, "- {line}");
        }
    }
    s
}

/// The reference proxy's figures that the gateway targets name: added p99
/// per rate and mode, and CPU per request (worst mode) at 100 and 3,000
/// req/s, for the steps that ran through it.
fn reference_figures(steps: &[StepReport]) -> Vec<String> {
    let mut out = Vec::new();
    for r in steps {
        if let Some(n) = &r.reference {
            out.push(format!(
                "nginx added p99 at {:.0} req/s ({}): {:.3} ms",
                r.rate,
                r.mode.name(),
                n.added_ms.p99
            ));
        }
    }
    for rate in [100.0, 3000.0] {
        let worst = steps
            .iter()
            .filter(|r| r.rate == rate)
            .filter_map(|r| r.reference.as_ref())
            .map(|n| n.cpu_ms_per_1000_requests / 1000.0)
            .reduce(f64::max);
        if let Some(cpu) = worst {
            out.push(format!(
                "nginx CPU per request at {rate:.0} req/s (worst mode): {cpu:.3} ms"
            ));
        }
    }
    out
}

/// A CPU ratio, or `-` when the reference's CPU was too small to read.
fn ratio(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.1}"))
}

/// The same steps through the reference proxy (nginx), beside Tollgate's.
fn reference_table(s: &mut String, report: &Report) {
    let steps: Vec<(&StepReport, &ReferenceStep)> = report
        .steps
        .iter()
        .filter_map(|r| Some((r, r.reference.as_ref()?)))
        .collect();
    if steps.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\nThe same steps through the reference proxy (nginx: one process, no access log, kept-alive upstream connections; on Tollgate's CPU), against the same direct call:\n"
    );
    let _ = writeln!(
        s,
        "| rate (req/s) | mode | nginx added p50 / p99 (ms) | Tollgate added p50 / p99 (ms) | nginx CPU per request (ms) | Tollgate CPU per request (ms) | Tollgate ÷ nginx (CPU) |"
    );
    let _ = writeln!(s, "|---:|---|---|---|---:|---:|---:|");
    for (r, n) in steps {
        let _ = writeln!(
            s,
            "| {:.0} | {} | {:.2} / {:.2} | {:.2} / {:.2} | {:.3} | {:.3} | {} |",
            r.rate,
            r.mode.name(),
            n.added_ms.p50,
            n.added_ms.p99,
            r.added_ms.p50,
            r.added_ms.p99,
            n.cpu_ms_per_1000_requests / 1000.0,
            r.tollgate_cpu_ms_per_1000_requests / 1000.0,
            ratio(n.tollgate_cpu_ratio),
        );
    }
}

/// The direct-versus-Tollgate steps.
fn gateway_table(s: &mut String, report: &Report) {
    let _ = writeln!(
        s,
        "| rate (req/s) | mode | direct p50 / p90 / p99 / max (ms) | Tollgate p50 / p90 / p99 / max (ms) | added p50 / p90 / p99 / max (ms) | success (direct / Tollgate) | achieved (req/s) | Tollgate CPU per 1,000 req (ms) | Tollgate peak RSS (MB) |"
    );
    let _ = writeln!(s, "|---:|---|---|---|---|---|---:|---:|---:|");
    let four = |p: &crate::load::Percentiles| format!("{:.2} / {:.2} / {:.2} / {:.2}", p.p50, p.p90, p.p99, p.max);
    for r in &report.steps {
        let a = &r.added_ms;
        let _ = writeln!(
            s,
            "| {:.0} | {} | {} | {} | {:.2} / {:.2} / {:.2} / {:.2} | {:.2}% / {:.2}% | {:.0} | {:.1} | {:.1} |",
            r.rate,
            r.mode.name(),
            four(&r.direct.latency_ms),
            four(&r.tollgate.latency_ms),
            a.p50,
            a.p90,
            a.p99,
            a.max,
            r.direct.success_rate * 100.0,
            r.tollgate.success_rate * 100.0,
            r.tollgate.achieved_rps,
            r.tollgate_cpu_ms_per_1000_requests,
            r.tollgate_peak_rss_mb,
        );
    }
    let ttfb: Vec<&StepReport> = report.steps.iter().filter(|r| r.added_ttfb_ms.is_some()).collect();
    if !ttfb.is_empty() {
        let _ = writeln!(s, "\nStreams, time to first byte:\n");
        let _ = writeln!(
            s,
            "| rate (req/s) | direct p50 / p99 (ms) | Tollgate p50 / p99 (ms) | added p50 / p99 (ms) |"
        );
        let _ = writeln!(s, "|---:|---|---|---|");
        for r in ttfb {
            if let (Some(d), Some(t), Some(a)) = (&r.direct.ttfb_ms, &r.tollgate.ttfb_ms, &r.added_ttfb_ms) {
                let _ = writeln!(
                    s,
                    "| {:.0} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} |",
                    r.rate, d.p50, d.p99, t.p50, t.p99, a.p50, a.p99
                );
            }
        }
    }
}
