//! External tools the compatibility suites drive. A missing tool fails the test: a suite that
//! silently skips can not fail, so it is not a test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::command::run;

/// How to get each tool, for the failure message.
fn install_hint(tool: &str) -> String {
    match tool {
        "kcat" => "install it with `apt-get install kcat` (.ci/run does)".to_string(),
        "python3" => "install python3 (the CI image has it via pyenv)".to_string(),
        "promtool" => {
            "install it with `apt-get install --no-install-recommends prometheus` (.ci/run does)"
                .to_string()
        }
        other => format!("install {other} (.ci/run should)"),
    }
}

/// The absolute path of `tool` on `PATH`, or a panic that says how to install it.
pub fn require_tool(tool: &str) -> PathBuf {
    find_on_path(tool).unwrap_or_else(|| panic!("{tool} not found: {}", install_hint(tool)))
}

fn find_on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `python3`, checked to import every module in `modules`; panics with the pip command
/// otherwise.
pub fn require_python_modules(modules: &[&str]) -> PathBuf {
    let python = require_tool("python3");
    for m in modules {
        let out = run(
            Command::new(&python).args(["-c", &format!("import {m}")]),
            None,
            Duration::from_secs(30),
        );
        assert!(
            out.success(),
            "python module `{m}` is missing for {}: \
             pip install confluent-kafka kafka-python lz4 python-snappy zstandard \
             (.ci/run does)\n{}",
            python.display(),
            out.stderr_str()
        );
    }
    python
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "no-such-tool-keel not found")]
    fn a_missing_tool_fails() {
        require_tool("no-such-tool-keel");
    }

    #[test]
    fn sh_is_found() {
        assert!(require_tool("sh").is_absolute());
    }
}
