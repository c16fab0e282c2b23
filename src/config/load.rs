//! Loading: defaults, the TOML file, the environment and the flags merged by
//! figment, and figment's errors turned into lines that name the option and
//! where the bad value came from.

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};

use super::{Cli, Config, ENV_PREFIX, Error};

/// What the command line asks of the process.
#[derive(Debug)]
#[non_exhaustive]
pub enum Invocation {
    /// Serve with this configuration.
    Serve(Config),
    /// Print this configuration as TOML and exit (`--print-config`).
    PrintConfig(Config),
}

impl Invocation {
    /// The configuration, whatever is asked of it.
    pub fn into_config(self) -> Config {
        match self {
            Invocation::Serve(config) | Invocation::PrintConfig(config) => config,
        }
    }
}

impl Config {
    /// The configuration the process was started with: its command line and
    /// environment over the file `--config` names and the defaults. Prints
    /// the help or version and exits for `--help` and `--version`, and exits
    /// with clap's message for a flag it does not know.
    ///
    /// # Errors
    ///
    /// Names the option when the file is missing, a key in it is unknown, or
    /// any value does not parse or is out of range.
    pub fn from_args() -> Result<Self, Error> {
        Self::invocation_from_args().map(Invocation::into_config)
    }

    /// What the process's command line asks: to serve, or to print the
    /// effective configuration (`--print-config`); otherwise as
    /// [`Config::from_args`].
    ///
    /// # Errors
    ///
    /// As for [`Config::from_args`].
    pub fn invocation_from_args() -> Result<Invocation, Error> {
        let cli = Cli::parse_args(std::env::args_os()).unwrap_or_else(|error| error.exit());
        let config = Self::load_from(&cli, std::env::vars())?;
        Ok(match cli.print_config {
            true => Invocation::PrintConfig(config),
            false => Invocation::Serve(config),
        })
    }

    /// The configuration `args` (the program's name first) and `vars` (the
    /// environment) give, as [`Config::from_args`] reads the process's.
    ///
    /// ```
    /// use redis_proxy::Config;
    ///
    /// let vars = [("REDIS_PROXY_CACHE_TTL".to_owned(), "30s".to_owned())];
    /// let config = Config::from_args_and_env(["redis-proxy", "--max-clients", "64"], vars).unwrap();
    /// assert_eq!(config.cache_ttl, std::time::Duration::from_secs(30));
    /// assert_eq!(config.max_clients.get(), 64);
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`Config::from_args`], and for flags that do not parse.
    pub fn from_args_and_env<I, T>(
        args: I,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Cli::parse_args(args).map_err(|error| Error::Invalid(error.to_string()))?;
        Self::load_from(&cli, vars)
    }

    /// Merges defaults, the optional TOML file, the environment (`vars`) and
    /// the flags.
    pub(super) fn load_from(
        cli: &Cli,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, Error> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &cli.config {
            // `Toml::file` silently skips a missing file; a named file that is not
            // there is a mistake the user wants to hear about.
            std::fs::metadata(path).map_err(|source| Error::File {
                path: path.clone(),
                source,
            })?;
            figment = figment.merge(Toml::file_exact(path));
        }
        // Only the documented keys are read: orchestrators inject variables such as
        // `REDIS_PROXY_PORT` (Kubernetes service links) that are not ours.
        let env = EnvSnapshot(
            vars.into_iter()
                .filter_map(|(key, value)| {
                    let key = key.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
                    Self::KEYS.contains(&key.as_str()).then_some((key, value))
                })
                .collect(),
        );
        let mut config: Config = figment
            .merge(env)
            .merge(Flags(cli))
            .extract()
            .map_err(describe)?;
        // An empty password is no password, as Redis reads `requirepass ""`: a
        // variable passed through empty (Compose does so) turns nothing on.
        if config
            .client_password
            .as_ref()
            .is_some_and(|p| p.expose().is_empty())
        {
            config.client_password = None;
        }
        let ignored = config.apply_twemproxy()?;
        config.validate()?;
        for line in ignored {
            eprintln!("redis-proxy: warning: {line}");
        }
        Ok(config)
    }
}

/// The proxy's variables from one snapshot of the environment, keys lower-cased
/// and stripped of [`ENV_PREFIX`]. (`figment::providers::Env` reads the live process
/// environment; a snapshot keeps loading a pure function of its inputs.)
struct EnvSnapshot(Vec<(String, String)>);

impl figment::Provider for EnvSnapshot {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let dict = self
            .0
            .iter()
            // Values are typed as `figment::providers::Env` types them: `10` is an
            // integer, `60s` a string; a password is text whatever it looks like.
            .map(|(key, value)| {
                let value = if Config::TEXT_KEYS.contains(&key.as_str()) {
                    figment::value::Value::from(value.clone())
                } else {
                    value.parse().expect("infallible")
                };
                (key.clone(), value)
            })
            .collect();
        Ok(figment::Profile::Default.collect(dict))
    }
}

/// The command-line flags as a figment source, under a name a user recognises.
struct Flags<'a>(&'a Cli);

impl figment::Provider for Flags<'_> {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("command-line flag")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Serialized::defaults(self.0).data()
    }
}

/// The names one option goes by: flag, environment variable and TOML key.
pub(super) fn option_names(key: &str) -> String {
    format!(
        "--{} (env {ENV_PREFIX}{}, TOML `{key}`)",
        key.replace('_', "-"),
        key.to_ascii_uppercase()
    )
}

/// Turns figment's error into one line per problem that names the option and
/// the source the bad value came from, in words rather than Rust's types.
fn describe(error: figment::Error) -> Error {
    let lines: Vec<String> = error
        .into_iter()
        .map(|e| {
            let source = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(src) => format!(" (from {} {src})", m.name),
                    None => format!(" (from {})", m.name),
                })
                .unwrap_or_default();
            let problem = explain(&e.kind);
            match (e.path.first(), e.path.last()) {
                (Some(first), _) if first == "users" => {
                    format!("TOML `[[users]]`: {problem}{source}")
                }
                (Some(first), _) if first == "cache_rules" => match e.path.get(1) {
                    Some(index) if index.parse::<usize>().is_ok() => {
                        format!("TOML `[[cache_rules]]` rule {index}: {problem}{source}")
                    }
                    _ => format!("TOML `[[cache_rules]]`: {problem}{source}"),
                },
                (_, Some(key)) if Config::KEYS.contains(&key.as_str()) => {
                    format!("{}: {problem}{source}", option_names(key))
                }
                _ => format!("{problem}{source}"),
            }
        })
        .collect();
    Error::Invalid(lines.join("; "))
}

/// One problem with a value, as a user reads it.
fn explain(kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    match kind {
        Kind::UnknownField(found, expected) => match closest(found, expected) {
            Some(near) => format!("unknown key `{found}`; did you mean `{near}`?"),
            None => format!("unknown key `{found}` (`redis-proxy --help` lists every option)"),
        },
        Kind::UnknownVariant(found, expected) => {
            format!("`{found}` is not one of: {}", expected.join(", "))
        }
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            format!("{} is not {}", shown(actual), in_words(expected))
        }
        Kind::MissingField(field) => format!("`{field}` is missing"),
        Kind::DuplicateField(field) => format!("`{field}` is given twice"),
        other => other.to_string(),
    }
}

/// A value as the user wrote it.
fn shown(actual: &figment::error::Actual) -> String {
    use figment::error::Actual;
    match actual {
        Actual::Unsigned(n) => format!("`{n}`"),
        Actual::Signed(n) => format!("`{n}`"),
        Actual::Float(n) => format!("`{n}`"),
        Actual::Bool(b) => format!("`{b}`"),
        Actual::Str(text) => format!("`{text}`"),
        Actual::Seq => "a list".to_owned(),
        Actual::Map => "a table".to_owned(),
        other => other.to_string(),
    }
}

/// What serde expected, without Rust's type names.
fn in_words(expected: &str) -> String {
    let words = match expected {
        "a nonzero usize" | "a nonzero u32" | "a nonzero u64" => "a whole number of at least 1",
        "usize" | "u64" | "u32" | "u16" | "a usize" | "u64 integer" => "a whole number",
        "a boolean" => "true or false",
        "a string" => "text in quotes",
        "a sequence" => "a list",
        other => other,
    };
    words.to_owned()
}

/// The expected name nearest `found` (at most a third of its letters off),
/// for a "did you mean".
fn closest<'a>(found: &str, expected: &[&'a str]) -> Option<&'a str> {
    expected
        .iter()
        .map(|candidate| (edit_distance(found, candidate), *candidate))
        .filter(|&(distance, _)| distance <= found.len().div_ceil(3).max(1))
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance, counting a swap of two neighbours as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}
