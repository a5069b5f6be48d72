//! `netcage ca path | export`.

use netcage::ca::Ca;

use super::CaCmd;

pub fn ca(cmd: CaCmd) -> anyhow::Result<u8> {
    match cmd {
        CaCmd::Path { key } => {
            let ca = Ca::load_or_create(&key.data_dir())?;
            println!("{}", ca.bundle_path().display());
        }
        CaCmd::Export { key } => {
            let ca = Ca::load_or_create(&key.data_dir())?;
            let pem = std::fs::read_to_string(ca.cert_path())?;
            print!("{pem}");
        }
    }
    Ok(0)
}
