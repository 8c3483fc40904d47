//! Membership commands (member add/promote/remove/update/list) and move-leader.

use cairn_client::{Client, Header, Member, MembershipResponse};
use serde_json::{json, Value};

use crate::cli::{MemberCommand, MoveLeaderArgs};
use crate::ctx::{display_endpoint, parse_hex_id, Ctx};
use crate::errors::{CliError, CliResult};
use crate::output::{header_json, Printer, Render, Table};

pub async fn run(ctx: &Ctx, cmd: &MemberCommand) -> CliResult<()> {
    let client = ctx.connect().await?;
    match cmd {
        MemberCommand::List => {
            let resp = ctx.bounded(async { Ok(client.member_list(true).await?) }).await?;
            ctx.printer.emit(&MemberOut { resp, action: Action::List })
        }
        MemberCommand::Add { name, peer_urls, learner } => {
            let resp = ctx.bounded(async { Ok(client.member_add(peer_urls.clone(), *learner).await?) }).await?;
            ctx.printer.emit(&MemberOut { resp, action: Action::Added { name: name.clone() } })
        }
        MemberCommand::Remove { id } => {
            let id = known_member(ctx, &client, id).await?;
            let resp = ctx.bounded(async { Ok(client.member_remove(id).await?) }).await?;
            ctx.printer.emit(&MemberOut { resp, action: Action::Changed { id, verb: "removed from" } })
        }
        MemberCommand::Update { id, peer_urls } => {
            let id = known_member(ctx, &client, id).await?;
            let resp = ctx.bounded(async { Ok(client.member_update(id, peer_urls.clone()).await?) }).await?;
            ctx.printer.emit(&MemberOut { resp, action: Action::Changed { id, verb: "updated in" } })
        }
        MemberCommand::Promote { id } => {
            let id = known_member(ctx, &client, id).await?;
            let resp = ctx.bounded(async { Ok(client.member_promote(id).await?) }).await?;
            ctx.printer.emit(&MemberOut { resp, action: Action::Changed { id, verb: "promoted in" } })
        }
    }
}

/// Parses a member ID and checks that it is in the member list, so that a typo
/// gets a clear error instead of the server's "member not found".
async fn known_member(ctx: &Ctx, client: &Client, id: &str) -> CliResult<u64> {
    let parsed = parse_hex_id("member", id)?;
    let list = ctx.bounded(async { Ok(client.member_list(true).await?) }).await?;
    if list.members.iter().any(|m| m.id == parsed) {
        Ok(parsed)
    } else {
        Err(unknown_member(parsed, &list.members))
    }
}

fn unknown_member(id: u64, members: &[Member]) -> CliError {
    let known: Vec<String> = members.iter().map(|m| format!("{:x} ({})", m.id, display_name(m))).collect();
    CliError::failed(format!("member {id:x} is not in the cluster (members: {})", known.join(", ")))
        .with_hint("member IDs are hexadecimal, as printed by `cairnctl member list`")
}

fn display_name(m: &Member) -> &str {
    if m.name.is_empty() {
        "unstarted"
    } else {
        &m.name
    }
}

pub async fn move_leader(ctx: &Ctx, a: &MoveLeaderArgs) -> CliResult<()> {
    let target = parse_hex_id("member", &a.target)?;
    let client = ctx.connect().await?;
    let list = ctx.bounded(async { Ok(client.member_list(true).await?) }).await?;
    let Some(member) = list.members.iter().find(|m| m.id == target) else {
        return Err(unknown_member(target, &list.members));
    };
    if member.is_learner {
        return Err(CliError::failed(format!("member {target:x} is a learner and cannot lead"))
            .with_hint("promote it first with `cairnctl member promote`"));
    }
    // Like etcd, the transfer has to be asked of the current leader.
    let status = ctx.bounded(async { Ok(client.status().await?) }).await?;
    let leader = status.leader;
    if leader == target {
        return Err(CliError::failed(format!("member {target:x} is already the leader")));
    }
    let leader_urls = list.members.iter().find(|m| m.id == leader).map(|m| m.client_urls.clone()).unwrap_or_default();
    let Some(url) = leader_urls.first() else {
        return Err(CliError::failed(format!("the leader {leader:x} advertises no client URL"))
            .with_hint("check `cairnctl member list`"));
    };
    let on_leader = ctx.connect_one(url).await?;
    let header = ctx.bounded(async { Ok(on_leader.move_leader(target).await?) }).await.map_err(|e| {
        if e.message.starts_with("outcome unknown") {
            e.with_hint("the transfer may still complete: see who leads with `cairnctl endpoint status --cluster`")
        } else {
            e
        }
    })?;
    ctx.printer.emit(&MovedOut { header, from: leader, to: target, via: display_endpoint(url) })
}

enum Action {
    List,
    Added { name: String },
    Changed { id: u64, verb: &'static str },
}

struct MemberOut {
    resp: MembershipResponse,
    action: Action,
}

fn member_json(m: &Member) -> Value {
    json!({
        "ID": m.id,
        "name": m.name,
        "peerURLs": m.peer_urls,
        "clientURLs": m.client_urls,
        "isLearner": m.is_learner,
    })
}

fn member_row(m: &Member) -> Vec<String> {
    vec![
        format!("{:x}", m.id),
        if m.name.is_empty() { "unstarted" } else { "started" }.into(),
        m.name.clone(),
        m.peer_urls.join(","),
        m.client_urls.join(","),
        m.is_learner.to_string(),
    ]
}

impl MemberOut {
    /// What the new member has to be started with.
    fn startup_lines(&self, name: &str) -> String {
        let Some(new) = &self.resp.member else { return String::new() };
        let cluster: Vec<String> = self
            .resp
            .members
            .iter()
            .flat_map(|m| {
                let n = if m.id == new.id { name.to_string() } else { m.name.clone() };
                m.peer_urls.iter().map(move |u| format!("{n}={u}"))
            })
            .collect();
        let cluster = cluster.join(",");
        let peers = new.peer_urls.join(",");
        format!(
            "\nETCD_NAME=\"{name}\"\nETCD_INITIAL_CLUSTER=\"{cluster}\"\nETCD_INITIAL_ADVERTISE_PEER_URLS=\"{peers}\"\n\
             ETCD_INITIAL_CLUSTER_STATE=\"existing\"\n\nStart it with:\n  cairn --name {name} --initial-cluster {cluster} \
             --initial-advertise-peer-urls {peers} --listen-peer-urls {peers} --initial-cluster-state existing \
             --data-dir <empty dir> --listen-client-urls <url> --advertise-client-urls <url>\n"
        )
    }
}

impl Render for MemberOut {
    fn simple(&self, _: &Printer) -> String {
        let cluster = self.resp.header.cluster_id;
        match &self.action {
            Action::List => self.resp.members.iter().map(|m| member_row(m).join(", ") + "\n").collect(),
            Action::Added { name } => {
                let id = self.resp.member.as_ref().map(|m| m.id).unwrap_or(0);
                let learner =
                    if self.resp.member.as_ref().is_some_and(|m| m.is_learner) { " as a learner" } else { "" };
                format!("Member {id:16x} added to cluster {cluster:16x}{learner}\n") + &self.startup_lines(name)
            }
            Action::Changed { id, verb } => format!("Member {id:16x} {verb} cluster {cluster:16x}\n"),
        }
    }
    fn json(&self) -> Value {
        let mut v = json!({
            "header": header_json(&self.resp.header),
            "members": self.resp.members.iter().map(member_json).collect::<Vec<_>>(),
        });
        if let Some(m) = &self.resp.member {
            v["member"] = member_json(m);
        }
        v
    }
    fn table(&self, _: &Printer) -> Table {
        let mut t = Table::new(&["ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER"]);
        for m in &self.resp.members {
            t.row(member_row(m));
        }
        t
    }
}

struct MovedOut {
    header: Header,
    from: u64,
    to: u64,
    via: String,
}

impl Render for MovedOut {
    fn simple(&self, _: &Printer) -> String {
        format!("Leadership transferred from {:x} to {:x}\n", self.from, self.to)
    }
    fn json(&self) -> Value {
        json!({"header": header_json(&self.header), "from": self.from, "to": self.to, "endpoint": self.via})
    }
    fn table(&self, _: &Printer) -> Table {
        let mut t = Table::new(&["FROM", "TO"]);
        t.row(vec![format!("{:x}", self.from), format!("{:x}", self.to)]);
        t
    }
}
