//! The HS256 secret: from configuration, or generated once into the data directory.

use std::fmt;
use std::fs;
use std::io::{ErrorKind, Write};
use std::path::Path;

use anyhow::{bail, Context};
use rand::TryRngCore;

/// Name of the generated secret's file inside the data directory.
pub const SECRET_FILE_NAME: &str = "jwt.secret";

/// An HS256 secret as text; its `Debug` output is redacted so it never reaches logs.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtSecret(String);

impl JwtSecret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> JwtSecret {
        JwtSecret(secret.into())
    }

    /// The secret's bytes, as used for HMAC (the UTF-8 bytes of the text).
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The secret as text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for JwtSecret {
    fn from(secret: String) -> JwtSecret {
        JwtSecret(secret)
    }
}

impl fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtSecret([redacted])")
    }
}

/// Reads `<data_dir>/jwt.secret`, creating the directory and the file (32 random bytes as 64 hex
/// characters, mode 0600) when missing. The secret is the file's text without the trailing
/// newline, so its content can also be passed to other services as `TRIPTRIP_JWT_SECRET`.
///
/// Creation is atomic: the secret is written and synced to a temporary file that is then linked
/// into place, so a concurrent start or a crash never leaves a partial secret, and of two
/// concurrent first starts both end up using the one that was linked first.
pub(crate) fn load_or_create(data_dir: &Path) -> anyhow::Result<JwtSecret> {
    let path = data_dir.join(SECRET_FILE_NAME);
    match read(&path) {
        Ok(secret) => return Ok(secret),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e),
    }
    fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;

    let mut random = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut random)
        .context("cannot read random bytes from the operating system")?;
    let text: String = random.iter().map(|b| format!("{b:02x}")).collect();

    let temp = data_dir.join(format!(
        ".{SECRET_FILE_NAME}.{}.{}.tmp",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let result = write_new(&temp, &text).and_then(|()| match fs::hard_link(&temp, &path) {
        Ok(()) => {
            sync_dir(data_dir);
            Ok(())
        }
        // Someone else created it meanwhile: theirs wins.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(anyhow::Error::new(e)
            .context(format!("cannot create the JWT secret {}", path.display()))),
    });
    let _ = fs::remove_file(&temp);
    result?;
    let secret = read(&path)?;
    if secret.0 == text {
        tracing::info!(path = %path.display(), "generated a new JWT signing secret");
    }
    Ok(secret)
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == ErrorKind::NotFound)
}

fn read(path: &Path) -> anyhow::Result<JwtSecret> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(e.into()),
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("cannot read the JWT secret {}", path.display())))
        }
    };
    warn_if_readable_by_others(path);
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        bail!(
            "the JWT secret file {} is empty; delete it to generate a new secret \
             (tokens signed with the old one will stop working)",
            path.display()
        );
    }
    Ok(JwtSecret(secret.to_owned()))
}

fn write_new(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let write = || -> std::io::Result<()> {
        let mut file = options.open(path)?;
        file.write_all(text.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(dir) = fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path) {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{:o}", mode & 0o777),
                    "the JWT secret is accessible to other users; run `chmod 600` on it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}
