//! The documentation stays true to the CLI: docs/cli.md is generated from the clap definition
//! (regenerate with `OVERLAY_BLESS=1 cargo test -p overlayctl --test docs`), and every
//! `overlayctl ...` command shown in README.md or docs/*.md must parse.

use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};
use overlayctl::cli::Cli;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn render(cmd: &mut clap::Command, path: &str, out: &mut String) {
    let help = cmd.render_long_help().to_string();
    out.push_str(&format!("## `{path}`\n\n```text\n{}\n```\n\n", help.trim_end()));
    let names: Vec<String> = cmd.get_subcommands().map(|c| c.get_name().to_string()).collect();
    for name in names {
        if name == "help" {
            continue;
        }
        if let Some(sub) = cmd.find_subcommand_mut(&name) {
            render(sub, &format!("{path} {name}"), out);
        }
    }
}

fn reference() -> String {
    let mut cmd = Cli::command();
    cmd.build();
    let mut out = String::from(
        "# overlayctl reference\n\n<!-- Generated from overlayctl's clap definition by \
         overlayctl/tests/docs.rs; do not edit by hand. -->\n\n",
    );
    render(&mut cmd, "overlayctl", &mut out);
    out
}

#[test]
fn cli_reference_is_current() {
    let path = root().join("docs/cli.md");
    let want = reference();
    if std::env::var_os("OVERLAY_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/cli.md is stale: run OVERLAY_BLESS=1 cargo test -p overlayctl --test docs"
    );
}

/// Splits a shell line into words, honouring simple quotes; drops a trailing `# comment`.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (None, '#') if cur.is_empty() && !any => break,
            (None, c) if c.is_whitespace() => {
                if !cur.is_empty() || any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if !cur.is_empty() || any {
        out.push(cur);
    }
    out
}

#[test]
fn documented_commands_parse() {
    let mut files = vec![root().join("README.md")];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") && !path.ends_with("cli.md") {
            files.push(path);
        }
    }
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let mut in_code = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
                continue;
            }
            let cmdline = line.trim().trim_start_matches("$ ");
            let cmdline = cmdline.strip_prefix("./target/release/").unwrap_or(cmdline);
            if !in_code || !cmdline.starts_with("overlayctl ") {
                continue;
            }
            checked += 1;
            if let Err(e) = Cli::try_parse_from(words(cmdline)) {
                let first = e.to_string().lines().next().unwrap_or_default().to_string();
                failures.push(format!("{}: `{cmdline}`: {first}", file.display()));
            }
        }
    }
    assert!(checked >= 15, "only {checked} documented commands found");
    assert!(
        failures.is_empty(),
        "documented commands the CLI rejects:\n{}",
        failures.join("\n")
    );
    println!("{checked} documented overlayctl commands parse");
}

#[test]
fn architecture_has_the_datapath_diagram() {
    let text = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    assert!(text.contains("```mermaid"), "diagram missing");
    for hop in ["netns", "veth", "bridge", "vxlan", "underlay"] {
        assert!(text.contains(hop), "datapath diagram does not mention {hop}");
    }
}
