//! `cluster health`: one screen that says whether the cluster is OK, and if not, why.

use std::time::{Duration, Instant};

use cairn_client::{Alarm, Member, MemberStatus};
use serde_json::{json, Value};

use crate::cli::HealthArgs;
use crate::cmd::endpoint::fill_client_urls;
use crate::cmd::maintenance::alarm_name;
use crate::ctx::{display_endpoint, Ctx};
use crate::errors::{CliError, CliResult, ExitKind};
use crate::output::{human_bytes, Printer, Render, Table};

/// What one member said (or why it said nothing).
struct MemberView {
    member: Member,
    endpoint: String,
    status: Result<MemberStatus, String>,
    rtt: Duration,
    /// Applied entries behind the leader (None if unknown).
    lag: Option<u64>,
}

/// The whole verdict.
struct Report {
    cluster_id: u64,
    leader: Option<u64>,
    term: Option<u64>,
    members: Vec<MemberView>,
    alarms: Vec<Alarm>,
    problems: Vec<String>,
}

pub async fn run(ctx: &Ctx, a: &HealthArgs) -> CliResult<()> {
    let client = ctx.connect().await?;
    // Serializable: the member list must come back even from a cluster without a quorum.
    let (cluster_id, members, note) = match ctx.bounded(async { Ok(client.member_list(false).await?) }).await {
        Ok(list) => (list.header.cluster_id, list.members, None),
        // A server without the Cluster API: judge the members named by --endpoints.
        Err(e) if e.message.starts_with("not supported") => {
            let members = ctx
                .endpoints()
                .into_iter()
                .map(|url| Member { client_urls: vec![url], ..Default::default() })
                .collect();
            (0, members, Some(format!("note: no member list ({}); showing the members in --endpoints", e.message)))
        }
        Err(e) => return Err(e),
    };
    let mut members = members;
    fill_client_urls(ctx, &mut members).await;
    let members = probe_members(ctx, members).await;
    let cluster_id = if cluster_id != 0 {
        cluster_id
    } else {
        members.iter().find_map(|m| m.status.as_ref().ok().map(|s| s.header.cluster_id)).unwrap_or(0)
    };
    let alarms = match ctx.bounded(async { Ok(client.alarm_list().await?) }).await {
        Ok(a) => Ok(a),
        // A server without the alarm call has no alarms to report.
        Err(e) if e.message.starts_with("not supported") => Ok(Vec::new()),
        Err(e) => Err(e.message),
    };
    let mut report = judge(cluster_id, members, alarms.clone().unwrap_or_default(), a.max_lag);
    if let Some(note) = note {
        eprintln!("{note}");
    }
    if let Err(e) = alarms {
        report.problems.push(format!("could not read the alarms: {e}"));
    }
    ctx.printer.emit(&report)?;
    if report.problems.is_empty() {
        Ok(())
    } else {
        Err(CliError::new(ExitKind::CheckFailed, format!("cluster is not healthy: {}", report.problems.join("; "))))
    }
}

/// Status of every member, concurrently, each through its own first client URL.
async fn probe_members(ctx: &Ctx, members: Vec<Member>) -> Vec<MemberView> {
    let jobs = members.into_iter().map(|m| async move {
        let Some(url) = m.client_urls.first().cloned() else {
            let status = Err("advertises no client URL (not started yet?)".to_string());
            return MemberView { member: m, endpoint: String::new(), status, rtt: Duration::ZERO, lag: None };
        };
        let start = Instant::now();
        let status = async {
            let c = ctx.connect_one(&url).await?;
            ctx.bounded(async { Ok(c.status().await?) }).await
        }
        .await
        .map_err(|e: CliError| e.message);
        let rtt = start.elapsed();
        let mut m = m;
        if let Ok(s) = &status {
            // Members taken from --endpoints learn their ID from their status.
            if m.id == 0 {
                m.id = s.header.member_id;
            }
        }
        MemberView { member: m, endpoint: display_endpoint(&url), status, rtt, lag: None }
    });
    futures::future::join_all(jobs).await
}

fn judge(cluster_id: u64, mut members: Vec<MemberView>, alarms: Vec<Alarm>, max_lag: u64) -> Report {
    let mut problems = Vec::new();
    let answered: Vec<&MemberStatus> = members.iter().filter_map(|m| m.status.as_ref().ok()).collect();
    let mut leaders: Vec<u64> = answered.iter().map(|s| s.leader).collect();
    leaders.sort_unstable();
    leaders.dedup();
    let leader = match leaders.as_slice() {
        [l] if *l != 0 => Some(*l),
        [] => None,
        [0] => {
            problems.push("no leader: members are electing, or there is no quorum".into());
            None
        }
        many => {
            let ids: Vec<String> = many.iter().map(|l| format!("{l:x}")).collect();
            problems.push(format!("members disagree on the leader ({})", ids.join(", ")));
            None
        }
    };
    let leader_status = leader.and_then(|l| answered.iter().find(|s| s.header.member_id == l).map(|s| (*s).clone()));
    if let (Some(l), None) = (leader, &leader_status) {
        problems.push(format!("the leader {l:x} does not answer"));
    }
    let term = leader_status.as_ref().map(|s| s.raft_term);
    for m in members.iter_mut() {
        let name = if m.member.name.is_empty() { format!("{:x}", m.member.id) } else { m.member.name.clone() };
        match &m.status {
            Err(e) => problems.push(format!("member {name} unreachable: {e}")),
            Ok(s) => {
                if let Some(ls) = &leader_status {
                    let lag = ls.raft_applied_index.saturating_sub(s.raft_applied_index);
                    m.lag = Some(lag);
                    if lag > max_lag {
                        problems.push(format!("member {name} lags {lag} entries behind the leader (limit {max_lag})"));
                    }
                    if s.raft_term != ls.raft_term {
                        problems.push(format!(
                            "member {name} is at term {} but the leader at {}",
                            s.raft_term, ls.raft_term
                        ));
                    }
                }
                if !s.errors.is_empty() {
                    problems.push(format!("member {name} reports: {}", s.errors.join(", ")));
                }
            }
        }
    }
    if members.is_empty() {
        problems.push("the member list is empty".into());
    }
    for a in &alarms {
        problems.push(format!("alarm {} raised by member {:x}", alarm_name(a.kind), a.member_id));
    }
    Report { cluster_id, leader, term, members, alarms, problems }
}

impl Report {
    fn slowest(&self) -> Option<&MemberView> {
        self.members.iter().filter(|m| m.status.is_ok()).max_by_key(|m| m.rtt)
    }

    fn member_name(&self, id: u64) -> String {
        self.members
            .iter()
            .find(|m| m.member.id == id)
            .map(|m| m.member.name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("{id:x}"))
    }

    fn row(&self, m: &MemberView) -> Vec<String> {
        let role = match (&m.status, self.leader) {
            (Err(_), _) => "unreachable",
            (Ok(s), _) if s.is_learner => "learner",
            (Ok(_), Some(l)) if l == m.member.id => "leader",
            (Ok(_), _) => "follower",
        };
        let (term, applied, db, errors) = match &m.status {
            Ok(s) => {
                (s.raft_term.to_string(), s.raft_applied_index.to_string(), human_bytes(s.db_size), s.errors.join(", "))
            }
            Err(e) => (String::new(), String::new(), String::new(), e.clone()),
        };
        vec![
            m.member.name.clone(),
            format!("{:x}", m.member.id),
            m.endpoint.clone(),
            role.into(),
            term,
            applied,
            m.lag.map(|l| l.to_string()).unwrap_or_default(),
            db,
            format!("{:.1?}", m.rtt),
            errors,
        ]
    }

    fn table_of_members(&self) -> Table {
        let mut t =
            Table::new(&["NAME", "ID", "ENDPOINT", "ROLE", "TERM", "APPLIED", "LAG", "DB SIZE", "RTT", "ERRORS"]);
        for m in &self.members {
            t.row(self.row(m));
        }
        t
    }
}

impl Render for Report {
    fn simple(&self, _: &Printer) -> String {
        let verdict = if self.problems.is_empty() { "OK" } else { "NOT OK" };
        let leader = match self.leader {
            Some(l) => {
                let id = format!("{l:x}");
                let name = self.member_name(l);
                let who = if name == id { id } else { format!("{name} ({id})") };
                match self.term {
                    Some(t) => format!("leader {who}, term {t}"),
                    None => format!("leader {who}, term unknown"),
                }
            }
            None => "no leader".into(),
        };
        let mut s = format!("cluster {:x}: {verdict} ({} members, {leader})\n", self.cluster_id, self.members.len());
        s += &self.table_of_members().render();
        let alarms: Vec<String> = self
            .alarms
            .iter()
            .map(|a| format!("{} on {}", alarm_name(a.kind), self.member_name(a.member_id)))
            .collect();
        s += &format!("alarms: {}\n", if alarms.is_empty() { "none".into() } else { alarms.join(", ") });
        if let Some(m) = self.slowest() {
            s += &format!("slowest member: {} ({:.1?})\n", self.member_name(m.member.id), m.rtt);
        }
        for p in &self.problems {
            s += &format!("problem: {p}\n");
        }
        s
    }
    fn json(&self) -> Value {
        let members: Vec<Value> = self
            .members
            .iter()
            .map(|m| {
                let s = m.status.as_ref().ok();
                json!({
                    "ID": m.member.id,
                    "name": m.member.name,
                    "endpoint": m.endpoint,
                    "reachable": s.is_some(),
                    "isLeader": self.leader == Some(m.member.id),
                    "isLearner": m.member.is_learner,
                    "raftTerm": s.map(|s| s.raft_term),
                    "raftIndex": s.map(|s| s.raft_index),
                    "raftAppliedIndex": s.map(|s| s.raft_applied_index),
                    "lag": m.lag,
                    "dbSize": s.map(|s| s.db_size),
                    "dbSizeInUse": s.map(|s| s.db_size_in_use),
                    "rtt_ms": m.rtt.as_secs_f64() * 1000.0,
                    "errors": match &m.status { Ok(s) => s.errors.clone(), Err(e) => vec![e.clone()] },
                })
            })
            .collect();
        let alarms: Vec<Value> =
            self.alarms.iter().map(|a| json!({"memberID": a.member_id, "alarm": alarm_name(a.kind)})).collect();
        json!({
            "ok": self.problems.is_empty(),
            "cluster_id": self.cluster_id,
            "leader": self.leader,
            "raftTerm": self.term,
            "members": members,
            "alarms": alarms,
            "slowest": self.slowest().map(|m| m.member.id),
            "problems": self.problems,
        })
    }
    fn table(&self, _: &Printer) -> Table {
        self.table_of_members()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_client::{AlarmKind, Header};

    fn view(id: u64, leader: u64, term: u64, applied: u64) -> MemberView {
        let status = MemberStatus {
            header: Header { member_id: id, ..Default::default() },
            leader,
            raft_term: term,
            raft_applied_index: applied,
            db_size: 20_000,
            ..Default::default()
        };
        MemberView {
            member: Member { id, name: format!("m{id}"), ..Default::default() },
            endpoint: format!("127.0.0.1:{id}"),
            status: Ok(status),
            rtt: Duration::from_millis(id),
            lag: None,
        }
    }

    #[test]
    fn a_settled_cluster_is_ok_and_names_its_slowest_member() {
        let r = judge(7, vec![view(1, 1, 3, 100), view(2, 1, 3, 99), view(3, 1, 3, 100)], Vec::new(), 10);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!((r.leader, r.term), (Some(1), Some(3)));
        assert_eq!(r.members.iter().map(|m| m.lag).collect::<Vec<_>>(), vec![Some(0), Some(1), Some(0)]);
        assert_eq!(r.slowest().map(|m| m.member.id), Some(3));
        let p = Printer { format: crate::cli::OutputFormat::Simple, hex: false };
        assert!(r.simple(&p).starts_with("cluster 7: OK (3 members, leader m1 (1), term 3)\n"), "{}", r.simple(&p));
    }

    #[test]
    fn each_problem_is_named() {
        let mut down = view(3, 0, 0, 0);
        down.status = Err("connection refused".into());
        let alarm = Alarm { member_id: 2, kind: AlarmKind::NoSpace };
        let r = judge(7, vec![view(1, 1, 3, 5000), view(2, 1, 2, 10), down], vec![alarm], 1000);
        let all = r.problems.join("\n");
        assert!(all.contains("member m2 lags 4990 entries"), "{all}");
        assert!(all.contains("member m2 is at term 2 but the leader at 3"), "{all}");
        assert!(all.contains("member m3 unreachable: connection refused"), "{all}");
        assert!(all.contains("alarm NOSPACE raised by member 2"), "{all}");
    }

    #[test]
    fn no_leader_or_split_views_are_problems() {
        let r = judge(7, vec![view(1, 0, 3, 1), view(2, 0, 3, 1)], Vec::new(), 10);
        assert!(r.problems.iter().any(|p| p.starts_with("no leader")), "{:?}", r.problems);
        let r = judge(7, vec![view(1, 1, 3, 1), view(2, 2, 3, 1)], Vec::new(), 10);
        assert!(r.problems.iter().any(|p| p.contains("disagree on the leader (1, 2)")), "{:?}", r.problems);
    }
}
