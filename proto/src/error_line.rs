//! How the daemons report the error they exit on: one line, the error and each cause it does
//! not already spell out (thiserror messages often embed their source), no backtrace.

use std::error::Error;

/// `error: cause: cause ...` on one line.
pub fn error_line(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read /x: {0}")]
    struct Embeds(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("--peers")]
    struct Context(#[source] Embeds);

    #[test]
    fn causes_once_each_on_one_line() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "gone\nreally");
        assert_eq!(error_line(&Embeds(io())), "cannot read /x: gone really");
        assert_eq!(
            error_line(&Context(Embeds(io()))),
            "--peers: cannot read /x: gone really"
        );
    }
}
