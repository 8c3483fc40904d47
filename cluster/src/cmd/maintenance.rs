//! Cluster maintenance: alarm list/disarm and defrag.

use cairn_client::{Alarm, AlarmKind, Header};
use serde_json::{json, Value};

use crate::cli::AlarmCommand;
use crate::cmd::endpoint::{each, report_failures, targets};
use crate::ctx::Ctx;
use crate::errors::CliResult;
use crate::output::{header_json, hex_id, Printer, Render, Table};

pub fn alarm_name(k: AlarmKind) -> &'static str {
    match k {
        AlarmKind::None => "NONE",
        AlarmKind::NoSpace => "NOSPACE",
        AlarmKind::Corrupt => "CORRUPT",
    }
}

pub async fn alarm(ctx: &Ctx, cmd: &AlarmCommand) -> CliResult<()> {
    let client = ctx.connect().await?;
    let alarms = match cmd {
        AlarmCommand::List => ctx.bounded(async { Ok(client.alarm_list().await?) }).await?,
        AlarmCommand::Disarm => ctx.bounded(async { Ok(client.alarm_disarm(0, AlarmKind::None).await?) }).await?,
    };
    ctx.printer.emit(&AlarmOut(alarms))
}

pub async fn defrag(ctx: &Ctx, cluster: bool) -> CliResult<()> {
    let eps = targets(ctx, cluster).await?;
    // One member at a time, as etcd advises: a member may pause while it defragments.
    let mut results = Vec::new();
    for ep in &eps {
        let r = each(ctx, std::slice::from_ref(ep), |c| async move { c.defragment().await }).await;
        results.extend(r);
    }
    let rows: Vec<(String, Header)> =
        results.iter().filter_map(|(ep, r)| r.as_ref().ok().map(|h| (ep.clone(), *h))).collect();
    ctx.printer.emit(&DefragOut(rows))?;
    report_failures("defragment", &results)
}

struct AlarmOut(Vec<Alarm>);

impl Render for AlarmOut {
    fn simple(&self, _: &Printer) -> String {
        self.0.iter().map(|a| format!("memberID:{} alarm:{}\n", a.member_id, alarm_name(a.kind))).collect()
    }
    fn json(&self) -> Value {
        let alarms: Vec<Value> =
            self.0.iter().map(|a| json!({"memberID": a.member_id, "alarm": alarm_name(a.kind)})).collect();
        json!({ "alarms": alarms })
    }
    fn table(&self, _: &Printer) -> Table {
        let mut t = Table::new(&["MEMBER ID", "ALARM"]);
        for a in &self.0 {
            t.row(vec![hex_id(a.member_id as i128), alarm_name(a.kind).into()]);
        }
        t
    }
}

struct DefragOut(Vec<(String, Header)>);

impl Render for DefragOut {
    fn simple(&self, _: &Printer) -> String {
        self.0.iter().map(|(ep, _)| format!("Finished defragmenting etcd member[{ep}]\n")).collect()
    }
    fn json(&self) -> Value {
        Value::Array(self.0.iter().map(|(ep, h)| json!({"Endpoint": ep, "header": header_json(h)})).collect())
    }
    fn table(&self, _: &Printer) -> Table {
        let mut t = Table::new(&["ENDPOINT", "DEFRAGMENTED"]);
        for (ep, _) in &self.0 {
            t.row(vec![ep.clone(), "true".into()]);
        }
        t
    }
}
