//! Findings of the loader and the verifier: what, where, how bad, and a stable code.

use std::fmt;

use serde::Serialize;

/// A position in a topology file: 1-based line and column (in characters).
///
/// `0:0` means "unknown" (a finding about the whole file); [`fmt::Display`]
/// prints nothing for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub struct Pos {
    /// 1-based line, 0 when unknown.
    pub line: u32,
    /// 1-based column, 0 when unknown.
    pub column: u32,
}

impl Pos {
    /// A position at `line`, `column` (both 1-based).
    pub const fn new(line: u32, column: u32) -> Self {
        Self { line, column }
    }

    /// Whether the position is known.
    pub const fn is_known(self) -> bool {
        self.line > 0
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_known() {
            write!(f, "{}:{}", self.line, self.column)
        } else {
            Ok(())
        }
    }
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Information that needs no fix (a cycle that has an exit). Never fails `choreo check`.
    Note,
    /// Probably a mistake; fails `choreo check` unless `--allow-warnings`.
    Warning,
    /// The topology is wrong; always fails `choreo check`.
    Error,
}

impl Severity {
    /// `error`, `warning` or `note`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! codes {
    ($( $(#[$doc:meta])* $variant:ident = $text:literal, )*) => {
        /// The stable identifier of a kind of finding, printed as `error[unconsumed-event]`
        /// and documented one by one in `docs/topology.md`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[non_exhaustive]
        pub enum Code {
            $( $(#[$doc])* $variant, )*
        }

        impl Code {
            /// Every code, loader codes first, in documentation order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The kebab-case name, e.g. `unconsumed-event`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Code::$variant => $text, )*
                }
            }
        }
    };
}

codes! {
    // --- loader ---
    /// The file is not valid YAML.
    YamlSyntax = "yaml-syntax",
    /// A key the schema does not know.
    UnknownKey = "unknown-key",
    /// A required key is absent.
    MissingKey = "missing-key",
    /// A value has the wrong YAML type (a list where a mapping is expected, …).
    InvalidType = "invalid-type",
    /// A value has the right type but is not allowed (an empty `one_of`, …).
    InvalidValue = "invalid-value",
    /// A name or topic has characters that are not allowed.
    InvalidName = "invalid-name",
    /// A duration is not like `500ms`, `5s`, `2m`, `1h30m`.
    InvalidDuration = "invalid-duration",
    /// The same key appears twice in one mapping.
    DuplicateKey = "duplicate-key",
    /// An event name that is not declared under `events`.
    UnknownEvent = "unknown-event",
    // --- verifier ---
    /// An event is consumed, starts or ends a flow, but no service emits it.
    NeverEmitted = "never-emitted",
    /// An event is emitted but no service consumes it and no flow ends with it.
    UnconsumedEvent = "unconsumed-event",
    /// A service emits an event on its own that starts no flow.
    StartOutsideFlow = "start-outside-flow",
    /// On some branch of a flow, no end can be reached.
    UnreachableEnd = "unreachable-end",
    /// A cycle that a `one_of` can leave.
    Cycle = "cycle",
    /// A cycle that, once entered, never stops.
    EndlessCycle = "endless-cycle",
    /// An event that no flow start leads to.
    UnreachedEvent = "unreached-event",
    /// A reaction whose event no flow start leads to.
    UnreachedReaction = "unreached-reaction",
    /// A service that takes part in no flow.
    UnreachedService = "unreached-service",
    /// A flow's `within` is shorter than the `within`s on its quickest path.
    WithinTooShort = "within-too-short",
    /// The same thing declared twice (an event twice in a list, two flows with one start).
    DuplicateDeclaration = "duplicate-declaration",
    /// A topic or event name that choreo reserves (`choreo.*`, `*.dlq`).
    ReservedName = "reserved-name",
    /// Two topics that Kafka treats as colliding (they differ only in `.` versus `_`).
    TopicClash = "topic-clash",
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// One finding: severity, stable code, message and where.
///
/// Displays as `file:line:column: severity[code]: message`, the shape editors
/// and compilers use, so a terminal click jumps to the spot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Diagnostic {
    /// How bad it is.
    pub severity: Severity,
    /// What kind of finding it is.
    pub code: Code,
    /// Lowercase, names the thing, says the fix.
    pub message: String,
    /// The topology file (as given to the loader).
    pub file: String,
    /// Where in the file; unknown is `0:0`.
    #[serde(flatten)]
    pub pos: Pos,
}

impl Diagnostic {
    /// A new finding.
    pub fn new(
        severity: Severity,
        code: Code,
        file: impl Into<String>,
        pos: Pos,
        message: impl Into<String>,
    ) -> Self {
        Self {
            severity,
            code,
            message: message.into(),
            file: file.into(),
            pos,
        }
    }

    /// `file:line:column` (or just `file` when the position is unknown).
    pub fn location(&self) -> String {
        if self.pos.is_known() {
            format!("{}:{}", self.file, self.pos)
        } else {
            self.file.clone()
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}[{}]: {}",
            self.location(),
            self.severity,
            self.code,
            self.message
        )
    }
}

/// Counts by severity, for summaries and exit codes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Number of errors.
    pub errors: usize,
    /// Number of warnings.
    pub warnings: usize,
    /// Number of notes.
    pub notes: usize,
}

impl Tally {
    /// Counts `diagnostics` by severity.
    pub fn of<'a>(diagnostics: impl IntoIterator<Item = &'a Diagnostic>) -> Self {
        let mut tally = Tally::default();
        for d in diagnostics {
            match d.severity {
                Severity::Error => tally.errors += 1,
                Severity::Warning => tally.warnings += 1,
                Severity::Note => tally.notes += 1,
            }
        }
        tally
    }
}

/// The closest candidate to `wrong` if it is close enough to be a likely typo:
/// within a few edits (a third of the length, at least two), best by
/// Jaro-Winkler similarity; case is ignored.
pub(crate) fn suggest<'a>(
    wrong: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = wrong.to_lowercase();
    let max_edits = (lower.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .filter_map(|c| {
            let candidate = c.to_lowercase();
            (strsim::levenshtein(&lower, &candidate) <= max_edits)
                .then(|| (strsim::jaro_winkler(&lower, &candidate), c))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let names = ["OrderShipped", "OrderPlaced", "PaymentFailed"];
        assert_eq!(suggest("OrderShiped", names), Some("OrderShipped"));
        assert_eq!(suggest("ordershipped", names), Some("OrderShipped"));
        assert_eq!(suggest("Refunded", names), None);
        assert_eq!(
            suggest("OrderCancelled", names),
            None,
            "a shared prefix is not enough"
        );
        assert_eq!(suggest("shema", ["schema", "topic"]), Some("schema"));
    }

    #[test]
    fn displays_like_a_compiler() {
        let d = Diagnostic::new(
            Severity::Warning,
            Code::UnconsumedEvent,
            "t.yaml",
            Pos::new(3, 5),
            "event 'X' is emitted by 'a' but nobody consumes it",
        );
        assert_eq!(
            d.to_string(),
            "t.yaml:3:5: warning[unconsumed-event]: event 'X' is emitted by 'a' but nobody consumes it"
        );
    }

    #[test]
    fn codes_are_unique_kebab_case() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            assert!(seen.insert(code.as_str()), "{code} twice");
            assert!(
                code.as_str()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '-')
            );
        }
    }
}
