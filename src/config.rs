//! Configuration: one TOML file, `IE_`-prefixed environment variables and command-line flags,
//! merged with the precedence flags > environment > file > built-in defaults.
//!
//! The settings are the CLI's own: every option that has an `IE_` environment variable is a
//! setting, and its key in the file is its long flag name (`listen`, `kafka-brokers`, ...).
//! Nothing is declared twice: this module reads the clap definition to know the keys, their
//! environment variables and value parsers, so an option added to the CLI is a config key at
//! once. The file's values become the options' defaults before clap parses, which gives the
//! precedence for free; every file value is validated first with the option's own parser so
//! the error names the key and the file.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, CommandFactory, FromArgMatches, Subcommand};
use serde_json::json;

/// The global `--config` option.
pub const CONFIG_FLAG: &str = "config";
/// Its environment variable.
pub const CONFIG_ENV: &str = "IE_CONFIG";
/// The prefix of every setting's environment variable.
pub const ENV_PREFIX: &str = "IE_";
/// Environment variables the engine reads that are not settings of the file.
pub const ENVIRONMENT_ONLY: [(&str, &str); 2] = [
    (CONFIG_ENV, "the configuration file (like --config)"),
    (store::sqlite_vault::MasterKey::ENV_VAR, "the vault master key (else DATA_DIR/master.key); never in a file"),
];
const MASK: &str = "********";
/// Last words of a key that names a secret: its value is never printed.
const SECRET_WORDS: [&str; 7] = ["secret", "key", "token", "password", "passphrase", "credentials", "credential"];

/// The configuration file option, global to every command.
#[derive(Args, Clone, Debug)]
pub struct ConfigFileArgs {
    /// A TOML file of settings (keys are the long option names); flags and IE_* variables win
    /// over it. See `integration-engine config keys`.
    #[arg(long = CONFIG_FLAG, env = CONFIG_ENV, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration: each key, its value (secrets masked) and where it
    /// came from (flag, env, file, default).
    Show {
        /// `text` (a table) or `json`.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        format: String,
    },
    /// Print every key as a Markdown table: key, environment variable, default, meaning.
    Keys,
}

/// One setting: a CLI option with an `IE_` environment variable.
#[derive(Debug, Clone)]
pub struct Setting {
    /// The key in the file: the long option name.
    pub key: String,
    /// The environment variable.
    pub env: String,
    pub help: String,
    pub default: Option<String>,
    arg: Arg,
}

/// The settings of `command` and all its subcommands, by key (options shared by several
/// commands, like `data-dir`, are one setting).
pub fn settings(command: &Command) -> BTreeMap<String, Setting> {
    let mut found = BTreeMap::new();
    collect(command, &mut found);
    found
}

fn collect(command: &Command, found: &mut BTreeMap<String, Setting>) {
    for arg in command.get_arguments() {
        let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) else { continue };
        if long == CONFIG_FLAG || found.contains_key(long) {
            continue;
        }
        let mut default = arg.get_default_values().iter().map(|v| v.to_string_lossy()).collect::<Vec<_>>().join(",");
        // clap gives a flag its `false` default only when it builds the command.
        if default.is_empty() && matches!(arg.get_action(), ArgAction::SetTrue) {
            default = "false".into();
        }
        found.insert(
            long.to_owned(),
            Setting {
                key: long.to_owned(),
                env: env.to_string_lossy().into_owned(),
                help: arg.get_help().map(|h| h.to_string()).unwrap_or_default(),
                default: (!default.is_empty()).then_some(default),
                arg: arg.clone(),
            },
        );
    }
    for sub in command.get_subcommands() {
        collect(sub, found);
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env(String),
    File(PathBuf),
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag => f.write_str("flag"),
            Source::Env(name) => write!(f, "env {name}"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Default => f.write_str("default"),
        }
    }
}

/// A configuration that cannot be used; the message names the file and the key.
#[derive(Debug)]
pub enum ConfigError {
    /// The command line itself (clap prints and exits).
    Cli(clap::Error),
    Invalid(String),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Cli(e) => write!(f, "{e}"),
            ConfigError::Invalid(message) => f.write_str(message),
        }
    }
}

/// The file's settings, validated.
#[derive(Debug, Clone, Default)]
pub struct FileValues {
    pub path: Option<PathBuf>,
    pub values: BTreeMap<String, String>,
}

/// What was parsed and where each part came from, for `config show`.
pub struct Effective {
    /// The CLI as defined, with its built-in defaults.
    defined: Command,
    /// The CLI with the environment's and the file's values as defaults.
    command: Command,
    matches: ArgMatches,
    file: FileValues,
}

/// Parses the command line of `P` (from `std::env::args_os`) over the file and environment.
pub fn parse<P: CommandFactory + FromArgMatches>() -> Result<(P, Effective), ConfigError> {
    parse_from::<P>(std::env::args_os().collect(), |name| std::env::var_os(name))
}

/// [`parse`] with the arguments and the environment given (for tests).
pub fn parse_from<P: CommandFactory + FromArgMatches>(
    args: Vec<OsString>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<(P, Effective), ConfigError> {
    let command = P::command();
    let known = settings(&command);
    let path = config_path(&args).or_else(|| env(CONFIG_ENV).filter(|v| !v.is_empty()).map(PathBuf::from));
    let file = match path {
        None => FileValues::default(),
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError::Invalid(format!("config file {}: {e}", path.display())))?;
            let values = read_file(&path, &text, &known, &command)?;
            FileValues { path: Some(path), values }
        }
    };
    // The environment's values are defaults too, over the file's: clap reads the process
    // environment itself as well, which gives the same values (and `parse_from` is testable).
    let mut defaults = file.values.clone();
    for setting in known.values() {
        if let Some(value) = env(&setting.env).filter(|v| !v.is_empty()) {
            check_value(&command, setting, &value).map_err(|reason| {
                ConfigError::Invalid(format!(
                    "environment variable {} (key `{}`): invalid value {:?}: {reason}",
                    setting.env,
                    setting.key,
                    value.to_string_lossy()
                ))
            })?;
            defaults.insert(setting.key.clone(), value.to_string_lossy().into_owned());
        }
    }
    let with_file = apply_defaults(command.clone(), &defaults);
    let matches = with_file.clone().try_get_matches_from(args).map_err(ConfigError::Cli)?;
    let parsed = P::from_arg_matches(&matches).map_err(|e| ConfigError::Cli(e.format(&mut with_file.clone())))?;
    Ok((parsed, Effective { defined: command, command: with_file, matches, file }))
}

/// `--config FILE` or `--config=FILE`, before clap has parsed anything.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let flag = format!("--{CONFIG_FLAG}");
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            return None;
        }
        if arg == flag {
            return args.next().map(PathBuf::from);
        }
        if let Some(value) = arg.strip_prefix(&format!("{flag}=")) {
            return Some(PathBuf::from(value));
        }
    }
    None
}

/// The file's keys as settings and their values as the options would take them from the
/// command line. Tables group keys: `[kafka] brokers` is `kafka-brokers`; `_` and `-` are one.
fn read_file(
    path: &Path,
    text: &str,
    known: &BTreeMap<String, Setting>,
    command: &Command,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid(format!("config file {}: {message}", path.display()));
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| invalid(e.to_string().trim().to_owned()))?;
    let mut flat = Vec::new();
    flatten("", "", &table, known, &mut flat);
    let mut values = BTreeMap::new();
    for (written, key, value) in flat {
        let Some(setting) = known.get(&key) else {
            let hint = closest(&key, known.keys()).map(|k| format!(" (did you mean `{k}`?)")).unwrap_or_default();
            return Err(invalid(format!(
                "unknown key `{written}`{hint}; `integration-engine config keys` lists the keys"
            )));
        };
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Table(entries) => {
                entries_as_value(entries).map_err(|reason| invalid(format!("key `{written}`: {reason}")))?
            }
            other => {
                return Err(invalid(format!("key `{written}`: expected a string, number or boolean, found {other}")));
            }
        };
        check_value(command, setting, OsStr::new(&text))
            .map_err(|reason| invalid(format!("key `{written}`: invalid value {text:?}: {reason}")))?;
        if values.insert(key.clone(), text).is_some() {
            return Err(invalid(format!("key `{written}` is set twice (as `{key}` and another spelling)")));
        }
    }
    Ok(values)
}

/// Settings whose value may be written as a table (`[roles.policy]`); any other table groups
/// keys (`[log] format` is `log-format`, though `log` is a setting too).
const TABLE_SETTINGS: [&str; 1] = ["roles-policy"];

/// (as written, normalized key, value) of every leaf of the table. A table whose key is one of
/// [`TABLE_SETTINGS`] is that setting's value, not a group of keys.
fn flatten<'a>(
    written: &str,
    prefix: &str,
    table: &'a toml::Table,
    known: &BTreeMap<String, Setting>,
    out: &mut Vec<(String, String, &'a toml::Value)>,
) {
    for (name, value) in table {
        let shown = if written.is_empty() { name.clone() } else { format!("{written}.{name}") };
        let key = format!("{prefix}{}", name.replace('_', "-"));
        match value {
            toml::Value::Table(inner) if !(TABLE_SETTINGS.contains(&key.as_str()) && known.contains_key(&key)) => {
                flatten(&shown, &format!("{key}-"), inner, known, out)
            }
            leaf => out.push((shown, key, leaf)),
        }
    }
}

/// A table given as one setting's value, in the form its option takes on the command line:
/// `NAME=VALUE[,VALUE...]` entries separated by `;` (an entry's values are a string or an
/// array of strings).
fn entries_as_value(entries: &toml::Table) -> Result<String, String> {
    let mut written = Vec::new();
    for (name, values) in entries {
        if name.contains([',', ';', '=']) {
            return Err(format!("`{name}` may not contain `,`, `;` or `=`"));
        }
        let values = match values {
            toml::Value::String(value) => vec![value.as_str()],
            toml::Value::Array(values) => values
                .iter()
                .map(|value| value.as_str().ok_or_else(|| format!("`{name}`: expected strings, found {value}")))
                .collect::<Result<_, _>>()?,
            other => return Err(format!("`{name}`: expected a string or an array of strings, found {other}")),
        };
        if let Some(bad) = values.iter().find(|value| value.contains([',', ';', '='])) {
            return Err(format!("`{name}`: {bad:?} may not contain `,`, `;` or `=`"));
        }
        written.push(format!("{name}={}", values.join(",")));
    }
    Ok(written.join(";"))
}

/// Runs the option's own value parser on `value`; the reason when it refuses it.
fn check_value(command: &Command, setting: &Setting, value: &OsStr) -> Result<(), String> {
    let arg = &setting.arg;
    // Flags (`--no-workers`) take a boolean in the file and the environment.
    if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
        return match value.to_string_lossy().as_ref() {
            "true" | "false" => Ok(()),
            _ => Err("expected true or false".into()),
        };
    }
    // clap keeps its parsers' entry point to itself: parse the value as a one-option command.
    let alone = arg.clone().required(false).global(false).env(None::<&str>).default_value(None::<&str>);
    let mut flag = OsString::from(format!("--{}=", setting.key));
    flag.push(value);
    Command::new(command.get_name().to_owned())
        .no_binary_name(true)
        .disable_help_flag(true)
        .arg(alone)
        .try_get_matches_from([flag])
        .map(|_| ())
        .map_err(|e| clap_reason(&e))
}

/// The reason of a value parser's error, without clap's usage text around it.
fn clap_reason(error: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    if let Some(source) = std::error::Error::source(error) {
        return source.to_string();
    }
    if let Some(ContextValue::Strings(valid)) = error.get(ContextKind::ValidValue) {
        return format!("expected one of: {}", valid.join(", "));
    }
    let text = error.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

/// The command with each file value as its option's default, in every subcommand.
fn apply_defaults(command: Command, values: &BTreeMap<String, String>) -> Command {
    let ids: Vec<_> = command
        .get_arguments()
        .filter(|arg| arg.get_long().is_some_and(|long| values.contains_key(long)))
        .map(|arg| arg.get_id().clone())
        .collect();
    let mut command = command;
    for id in ids {
        command = command.mut_arg(id, |arg| {
            let value = values[arg.get_long().unwrap_or_default()].clone();
            arg.default_value(value)
        });
    }
    let subcommands: Vec<String> = command.get_subcommands().map(|sub| sub.get_name().to_owned()).collect();
    for name in subcommands {
        command = command.mut_subcommand(name, |sub| apply_defaults(sub, values));
    }
    command
}

/// The known key nearest to `key`, when one is near enough to be a typo of it.
fn closest<'a>(key: &str, known: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    known.map(|k| (edit_distance(key, k), k)).filter(|(d, _)| *d <= 3).min_by_key(|(d, _)| *d).map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Whether `key` names a secret (its last word is one of [`SECRET_WORDS`]).
pub fn is_secret_key(key: &str) -> bool {
    let last = key.rsplit(['-', '_']).next().unwrap_or(key).to_ascii_lowercase();
    SECRET_WORDS.contains(&last.as_str())
}

/// `value` with the credentials of any URL in it (`scheme://user:password@host`) masked.
pub fn mask_url_credentials(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(scheme_end) = rest.find("://") {
        let authority_start = scheme_end + 3;
        out.push_str(&rest[..authority_start]);
        rest = &rest[authority_start..];
        let authority_end = rest.find(['/', '?', '#', ',', ' ']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            out.push_str(MASK);
            rest = &rest[at..];
        }
    }
    out.push_str(rest);
    out
}

/// A value as `config show` prints it.
pub fn shown_value(key: &str, value: &str) -> String {
    if is_secret_key(key) && !value.is_empty() { MASK.to_owned() } else { mask_url_credentials(value) }
}

/// One line of `config show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownSetting {
    pub key: String,
    pub value: Option<String>,
    pub source: Source,
}

impl Effective {
    /// `IE_` variables in the environment that are neither settings nor environment-only.
    pub fn unknown_environment(&self, env: impl Iterator<Item = (OsString, OsString)>) -> Vec<String> {
        let known = settings(&self.command);
        env.filter_map(|(name, _)| name.into_string().ok())
            .filter(|name| name.starts_with(ENV_PREFIX))
            .filter(|name| !ENVIRONMENT_ONLY.iter().any(|(n, _)| n == name))
            .filter(|name| !known.values().any(|s| &s.env == name))
            .collect()
    }

    /// Every setting with its effective value (masked) and source, as the command that was run
    /// sees it; settings of other commands as the environment, file and defaults give them.
    pub fn shown(&self, env: impl Fn(&str) -> Option<OsString>) -> Vec<ShownSetting> {
        let leaf = leaf_matches(&self.matches);
        let defined = settings(&self.defined);
        settings(&self.command)
            .into_values()
            .map(|setting| {
                let id = setting.arg.get_id().as_str();
                let from_flag = leaf
                    .try_get_raw(id)
                    .ok()
                    .flatten()
                    .filter(|_| leaf.value_source(id) == Some(ValueSource::CommandLine))
                    .map(|values| values.map(|v| v.to_string_lossy().into_owned()).collect::<Vec<_>>().join(","));
                let (value, source) = if let Some(value) = from_flag {
                    (Some(value), Source::Flag)
                } else if let Some(value) = env(&setting.env).filter(|v| !v.is_empty()) {
                    (Some(value.to_string_lossy().into_owned()), Source::Env(setting.env.clone()))
                } else if let (Some(value), Some(path)) = (self.file.values.get(&setting.key), &self.file.path) {
                    (Some(value.clone()), Source::File(path.clone()))
                } else {
                    (defined.get(&setting.key).and_then(|s| s.default.clone()), Source::Default)
                };
                ShownSetting { value: value.map(|v| shown_value(&setting.key, &v)), key: setting.key, source }
            })
            .collect()
    }

    pub fn file_path(&self) -> Option<&Path> {
        self.file.path.as_deref()
    }
}

/// The matches of the subcommand that was run (global options are propagated down to it).
fn leaf_matches(matches: &ArgMatches) -> &ArgMatches {
    let mut current = matches;
    while let Some((_, sub)) = current.subcommand() {
        current = sub;
    }
    current
}

/// `integration-engine config ...`.
pub fn run(command: ConfigCommand, effective: &Effective) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Show { format } => {
            let shown = effective.shown(|name| std::env::var_os(name));
            let master_key = std::env::var_os(store::sqlite_vault::MasterKey::ENV_VAR).filter(|v| !v.is_empty());
            if format == "json" {
                let settings: Vec<_> = shown
                    .iter()
                    .map(|s| json!({ "key": s.key, "value": s.value, "source": s.source.to_string() }))
                    .collect();
                let document = json!({
                    "file": effective.file_path().map(|p| p.display().to_string()),
                    "settings": settings,
                    "environmentOnly": {
                        store::sqlite_vault::MasterKey::ENV_VAR: master_key.map(|_| MASK),
                    },
                    "unknownEnvironment": effective.unknown_environment(std::env::vars_os()),
                });
                println!("{}", serde_json::to_string_pretty(&document)?);
                return Ok(());
            }
            match effective.file_path() {
                Some(path) => println!("# config file: {}", path.display()),
                None => println!("# config file: none (--config FILE or {CONFIG_ENV})"),
            }
            let width = shown.iter().map(|s| s.key.len()).max().unwrap_or(0);
            let values: Vec<String> =
                shown.iter().map(|s| s.value.clone().unwrap_or_else(|| "(unset)".into())).collect();
            let value_width = values.iter().map(String::len).max().unwrap_or(0).min(48);
            for (setting, value) in shown.iter().zip(&values) {
                println!("{:width$}  {:value_width$}  {}", setting.key, value, setting.source);
            }
            let master = if master_key.is_some() { MASK } else { "(unset: DATA_DIR/master.key)" };
            println!("# environment only: {} = {master}", store::sqlite_vault::MasterKey::ENV_VAR);
            for name in effective.unknown_environment(std::env::vars_os()) {
                println!("# warning: {name} is not a setting");
            }
            Ok(())
        }
        ConfigCommand::Keys => {
            print!("{}", keys_markdown(&effective.defined));
            Ok(())
        }
    }
}

/// The table of every key (README's "Configuration keys").
pub fn keys_markdown(command: &Command) -> String {
    let mut out = String::from("| key | environment | default | meaning |\n|---|---|---|---|\n");
    for setting in settings(command).into_values() {
        let default = match &setting.default {
            Some(d) => format!("`{}`", shown_value(&setting.key, d)),
            None => "—".to_owned(),
        };
        let help = setting.help.replace('\n', " ").replace('|', "\\|");
        out.push_str(&format!("| `{}` | `{}` | {} | {} |\n", setting.key, setting.env, default, help));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser, Debug)]
    struct Probe {
        #[arg(long, env = "IE_PROBE_FLAG")]
        probe_flag: bool,
        #[arg(long, env = "IE_PROBE_COUNT", default_value_t = 1)]
        probe_count: u32,
        // The engine's own keys, under variables no one sets.
        #[arg(long, env = "IE_PROBE_ROLES_POLICY")]
        roles_policy: Option<String>,
        #[arg(long, env = "IE_PROBE_LOG")]
        log: Option<String>,
        #[arg(long, env = "IE_PROBE_LOG_FORMAT")]
        log_format: Option<String>,
        #[arg(long = CONFIG_FLAG)]
        config: Option<PathBuf>,
    }

    fn probe(file: &str, args: &[&str], env: &[(&str, &str)]) -> Probe {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probe.toml");
        std::fs::write(&path, file).unwrap();
        let mut argv: Vec<OsString> = vec!["probe".into(), "--config".into(), path.into()];
        argv.extend(args.iter().map(OsString::from));
        let env: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        parse_from::<Probe>(argv, |name| env.get(name).map(OsString::from)).map(|(p, _)| p).unwrap()
    }

    #[test]
    fn file_values_sit_between_the_environment_and_the_defaults() {
        assert!(!probe("", &[], &[]).probe_flag);
        assert!(probe("probe-flag = true", &[], &[]).probe_flag);
        assert_eq!(probe("probe-count = 5", &[], &[]).probe_count, 5);
        assert_eq!(probe("probe-count = 5", &[], &[("IE_PROBE_COUNT", "6")]).probe_count, 6);
        assert_eq!(probe("probe-count = 5", &["--probe-count", "7"], &[("IE_PROBE_COUNT", "6")]).probe_count, 7);
    }

    #[test]
    fn a_table_whose_key_is_a_setting_is_its_value() {
        let file = "[probe]\ncount = 2\n[roles.policy]\nb = \"y\"\na = [\"x\", \"z\"]\n\"*\" = [\"w\"]\n";
        let parsed = probe(file, &[], &[]);
        assert_eq!(parsed.probe_count, 2, "a table that is no setting still groups keys");
        assert_eq!(parsed.roles_policy.as_deref(), Some("*=w;a=x,z;b=y"));
        let grouped = probe("[log]\nformat = \"json\"\n", &[], &[]);
        assert_eq!(
            (grouped.log, grouped.log_format.as_deref()),
            (None, Some("json")),
            "only a table setting takes a table"
        );

        let refused = |file: &str| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("probe.toml");
            std::fs::write(&path, file).unwrap();
            let argv: Vec<OsString> = vec!["probe".into(), "--config".into(), path.into()];
            match parse_from::<Probe>(argv, |_| None) {
                Err(ConfigError::Invalid(message)) => message,
                _ => panic!("{file:?} was accepted"),
            }
        };
        assert!(refused("[roles.policy]\na = 1\n").contains("key `roles.policy`: `a`: expected a string or an array"));
        assert!(refused("[roles.policy]\na = [\"x;y\"]\n").contains("may not contain"));
        assert!(refused("[roles.policy]\n\"a=x;b\" = [\"y\"]\n").contains("may not contain"));
    }

    #[test]
    fn secret_keys_are_named_by_their_last_word() {
        assert!(is_secret_key("master-key"));
        assert!(is_secret_key("client_secret"));
        assert!(is_secret_key("api-token"));
        assert!(!is_secret_key("token-leeway-seconds"));
        assert!(!is_secret_key("webhook-secret-grace-seconds"));
    }

    #[test]
    fn url_credentials_are_masked_and_the_rest_kept() {
        assert_eq!(mask_url_credentials("https://alice:pw@idp.example/jwks"), "https://********@idp.example/jwks");
        assert_eq!(mask_url_credentials("http://collector:4318"), "http://collector:4318");
        assert_eq!(
            mask_url_credentials("sasl://u:p@b1:9092,sasl://u:p@b2:9092"),
            "sasl://********@b1:9092,sasl://********@b2:9092"
        );
        assert_eq!(mask_url_credentials("https://idp.example/a@b"), "https://idp.example/a@b");
    }

    #[test]
    fn typos_get_a_suggestion() {
        let keys = ["listen".to_string(), "kafka-brokers".to_string()];
        assert_eq!(closest("kafka-broker", keys.iter()).map(String::as_str), Some("kafka-brokers"));
        assert_eq!(closest("colour", keys.iter()), None);
    }

    #[test]
    fn the_config_flag_is_found_in_both_spellings() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(config_path(&args(&["ie", "--config", "a.toml", "serve"])), Some("a.toml".into()));
        assert_eq!(config_path(&args(&["ie", "serve", "--config=b.toml"])), Some("b.toml".into()));
        assert_eq!(config_path(&args(&["ie", "serve", "--", "--config", "c"])), None);
    }
}
