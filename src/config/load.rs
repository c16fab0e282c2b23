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
        config.validate()?;
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
/// the source the bad value came from.
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
            match (e.path.first(), e.path.last()) {
                (Some(first), _) if first == "users" => {
                    format!("TOML `[[users]]`: {}{source}", e.kind)
                }
                (_, Some(key)) if Config::KEYS.contains(&key.as_str()) => {
                    format!("{}: {}{source}", option_names(key), e.kind)
                }
                _ => format!("{}{source}", e.kind),
            }
        })
        .collect();
    Error::Invalid(lines.join("; "))
}
