//! `otpauth://totp/` enrollment URIs and their QR codes (SVG and PNG).

use otpgate_hsm::TotpParams;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use qrcode::render::svg;
use qrcode::{Color, EcLevel, QrCode};
use zeroize::Zeroizing;

/// Everything but RFC 3986 unreserved characters is encoded, so a `:` or a
/// space inside the issuer or account cannot be read as a separator.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Builds the key URI that authenticator apps scan. The label is
/// `issuer:account` with each part percent-encoded once, and the issuer
/// is repeated as a parameter, as Google Authenticator's key URI format
/// recommends.
pub fn uri(issuer: &str, account: &str, secret_base32: &str, params: &TotpParams) -> Zeroizing<String> {
    let issuer = utf8_percent_encode(issuer, COMPONENT).to_string();
    let account = utf8_percent_encode(account, COMPONENT).to_string();
    Zeroizing::new(format!(
        "otpauth://totp/{issuer}:{account}?secret={secret_base32}&issuer={issuer}&algorithm={}&digits={}&period={}",
        params.algorithm.as_str(),
        params.digits,
        params.period
    ))
}

/// Groups a base32 secret in blocks of four for typing.
pub fn grouped(secret_base32: &str) -> Zeroizing<String> {
    let chars: Vec<char> = secret_base32.chars().collect();
    Zeroizing::new(chars.chunks(4).map(|c| c.iter().collect::<String>()).collect::<Vec<_>>().join(" "))
}

fn qr(uri: &str) -> QrCode {
    QrCode::with_error_correction_level(uri.as_bytes(), EcLevel::M).expect("an otpauth URI fits in a QR code")
}

/// Renders the URI as an inline SVG QR code.
pub fn svg(uri: &str) -> String {
    qr(uri)
        .render::<svg::Color<'_>>()
        .min_dimensions(220, 220)
        .quiet_zone(true)
        .build()
}

/// Pixels per QR module in the PNG.
const PNG_SCALE: usize = 6;
/// Quiet zone in modules on each side, as ISO/IEC 18004 requires.
const QUIET_ZONE: usize = 4;

/// Renders the URI as a grayscale PNG QR code.
pub fn png(uri: &str) -> Vec<u8> {
    let code = qr(uri);
    let width = code.width();
    let colors = code.to_colors();
    let side = (width + 2 * QUIET_ZONE) * PNG_SCALE;
    let mut pixels = vec![255u8; side * side];
    for (index, color) in colors.iter().enumerate() {
        if *color != Color::Dark {
            continue;
        }
        let (x, y) = (index % width + QUIET_ZONE, index / width + QUIET_ZONE);
        for dy in 0..PNG_SCALE {
            let row = (y * PNG_SCALE + dy) * side;
            pixels[row + x * PNG_SCALE..row + (x + 1) * PNG_SCALE].fill(0);
        }
    }
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, side as u32, side as u32);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().expect("PNG header encodes");
        writer.write_image_data(&pixels).expect("PNG data encodes");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_parts_are_encoded_once() {
        let uri = uri("Acme: Ops & Co", "anna@example.org", "JBSWY3DPEHPK3PXP", &TotpParams::default());
        assert_eq!(
            uri.as_str(),
            "otpauth://totp/Acme%3A%20Ops%20%26%20Co:anna%40example.org?secret=JBSWY3DPEHPK3PXP&issuer=Acme%3A%20Ops%20%26%20Co&algorithm=SHA1&digits=6&period=30"
        );
    }

    #[test]
    fn secret_grouped_in_fours() {
        assert_eq!(grouped("JBSWY3DPEHPK3PXP").as_str(), "JBSW Y3DP EHPK 3PXP");
        assert_eq!(grouped("ABCDEF").as_str(), "ABCD EF");
    }
}
