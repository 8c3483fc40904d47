//! Records the Git commit the server is built from, for `cairn --version`
//! (`CAIRN_GIT_COMMIT`; "unknown" outside a Git checkout). It names the commit
//! checked out at build time; uncommitted changes are not marked.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok().filter(|o| o.status.success())?;
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string()).filter(|s| !s.is_empty())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CAIRN_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branches (a commit
    // writes its branch's file under refs/heads, which cargo scans as a directory),
    // and packed refs. In a worktree the branches live in the common dir. Only
    // paths that exist are named: cargo reruns a build script on every build while
    // a path it names is missing.
    if let (Some(git_dir), Some(common)) = (git(&["rev-parse", "--git-dir"]), git(&["rev-parse", "--git-common-dir"])) {
        let (git_dir, common) = (PathBuf::from(git_dir), PathBuf::from(common));
        for path in [git_dir.join("HEAD"), common.join("refs").join("heads"), common.join("packed-refs")] {
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
