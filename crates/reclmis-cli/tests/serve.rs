//! `reclmis serve` over real HTTP on a free loopback port: the API gives the probabilities the
//! authors' code computed (docs §1.11 parity fixture), bad uploads get a 4xx naming what is wrong
//! while the server keeps serving, and a burst beyond `--workers + --queue` gets 503.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;
use common::{io_floats, parity_dir};

/// A running `reclmis serve`, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(checkpoint: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_reclmis"))
            .args([
                "--threads",
                "2",
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--checkpoint",
            ])
            .arg(checkpoint)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the reclmis binary runs");
        // The first line names the address once the model is loaded and the port bound.
        let mut stdout = child.stdout.take().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let line = String::from_utf8(line).unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .parse()
            .unwrap();
        Server { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Reply {
    /// Status 200, else the failure shows `what` and the body.
    fn assert_ok(&self, what: &str) {
        assert_eq!(
            self.status,
            200,
            "{what}: {}",
            String::from_utf8_lossy(&self.body)
        );
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            )
        })
    }

    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap().to_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
fn request(addr: SocketAddr, method: &str, path: &str, content_type: &str, body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: \
         {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) and close before reading a large body.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete HTTP response");
    let headers = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = headers.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 4 + size..];
    }
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, "text/plain", b"")
}

/// One form field: name, file name (none for a text field), bytes.
type Field<'a> = (&'a str, Option<&'a str>, &'a [u8]);

/// A multipart form; a text field has no filename.
fn form(fields: &[Field]) -> (String, Vec<u8>) {
    const BOUNDARY: &str = "reclmis-test-boundary-7d1f";
    let mut body = Vec::new();
    for (name, filename, bytes) in fields {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match filename {
            Some(f) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={BOUNDARY}"), body)
}

fn segment(addr: SocketAddr, fields: &[Field]) -> Reply {
    let (content_type, body) = form(fields);
    request(addr, "POST", "/api/segment", &content_type, &body)
}

/// The first parity image's bytes, file name and note.
fn parity_input() -> (Vec<u8>, String, String) {
    let dir = parity_dir();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let first = &manifest["inputs"][0];
    let name = first["image"].as_str().unwrap().to_owned();
    let bytes = std::fs::read(dir.join("inputs/img").join(&name)).unwrap();
    (bytes, name, first["note"].as_str().unwrap().to_owned())
}

fn floats(rows: &serde_json::Value) -> Vec<f32> {
    rows.as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter())
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

/// A PNG whose header claims `w × h` grey pixels, followed by one tiny, wrong IDAT.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        // The decoder checks each chunk's CRC (over its kind and data) before using it.
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00]);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn the_api_segments_like_predict_and_refuses_bad_uploads_without_stopping() {
    const S: usize = 224;
    let authors = parity_dir().join("best_model-RecLMIS.pth.tar");
    let server = Server::start(&authors, &["--max-upload-mb", "2", "--queue", "4"]);
    let addr = server.addr;

    // The page and its assets.
    let page = get(addr, "/");
    assert_eq!(page.status, 200);
    let html = String::from_utf8(page.body).unwrap();
    assert!(html.contains("<script src=\"/page.js\">"), "{html}");
    assert_eq!(get(addr, "/page.js").status, 200);
    assert_eq!(get(addr, "/page.css").status, 200);
    assert_eq!(get(addr, "/no-such-page").status, 404);

    let model = get(addr, "/api/model").json();
    assert_eq!(model["image_size"], S);
    assert_eq!(model["parameters"]["inference_path"], 81_871_101);

    // One image and note: the authors' probabilities, the mask at 0.5, POI summing to 1.
    let (image, name, note) = parity_input();
    let good = [
        ("image", Some(name.as_str()), image.as_slice()),
        ("note", None, note.as_bytes()),
    ];
    let reply = segment(addr, &good);
    reply.assert_ok(&name);
    let v = reply.json();
    let prob = floats(&v["prob"]);
    let probs = io_floats("probs");
    let err = prob
        .iter()
        .zip(&probs[..S * S])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(err < 1e-4, "prob differs from the authors' by {err:.3e}");
    let mask = floats(&v["mask"]);
    assert!(
        mask.iter()
            .zip(&prob)
            .all(|(&m, &p)| m == f32::from(p > 0.5))
    );
    let poi: f32 = floats(&v["poi"]).iter().sum();
    assert!((poi - 1.0).abs() < 1e-3, "POI sums to {poi}");
    assert_eq!(v["grid"], 14);
    let first_word = note.split_whitespace().next().unwrap().to_lowercase();
    assert_eq!(v["woi"][0]["word"], first_word.as_str());
    assert!(
        v["image"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,")
    );

    // A higher threshold keeps a subset of the mask.
    let strict = segment(addr, &[good[0], good[1], ("threshold", None, b"0.9")]).json();
    let fraction = |v: &serde_json::Value| v["mask_fraction"].as_f64().unwrap();
    let expected = prob.iter().filter(|&&p| p > 0.9).count() as f64 / (S * S) as f64;
    assert!((fraction(&strict) - expected).abs() < 1e-12);
    assert!(fraction(&strict) <= fraction(&v));

    // Bad uploads: a 4xx naming what is wrong, one after another.
    let truncated = &image[..image.len() / 3];
    let cases: Vec<(Vec<Field>, u16, &str)> = vec![
        (
            vec![
                ("image", Some("notes.txt"), b"not an image at all"),
                ("note", None, b"x"),
            ],
            422,
            "notes.txt",
        ),
        (
            vec![("image", Some("cut.png"), truncated), ("note", None, b"x")],
            422,
            "cut.png",
        ),
        (
            vec![("image", Some("empty.png"), b""), ("note", None, b"x")],
            422,
            "empty.png",
        ),
        (vec![("note", None, b"x")], 400, "no `image` field"),
        (vec![good[0]], 400, "no `note` field"),
        (
            vec![good[0], good[1], ("threshold", None, b"2")],
            400,
            "threshold",
        ),
        (
            vec![good[0], good[1], ("colour", None, b"red")],
            400,
            "unknown form field",
        ),
    ];
    for (fields, status, needle) in &cases {
        let r = segment(addr, fields);
        assert_eq!(
            r.status,
            *status,
            "{needle}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.error().contains(needle), "{needle}: {}", r.error());
    }
    let zero = png_claiming(0, 0);
    let r = segment(addr, &[("image", Some("zero.png"), &zero), good[1]]);
    assert_eq!(r.status, 422, "{}", r.error());
    assert!(r.error().contains("zero.png"), "{}", r.error());
    let huge = png_claiming(20_000, 20_000);
    let r = segment(addr, &[("image", Some("huge.png"), &huge), good[1]]);
    assert_eq!(r.status, 413, "{}", r.error());
    assert!(r.error().contains("20000×20000"), "{}", r.error());
    let big = vec![7u8; 3 * 1024 * 1024];
    let r = segment(addr, &[("image", Some("big.png"), &big), good[1]]);
    assert_eq!(r.status, 413);
    let r = request(addr, "POST", "/api/segment", "text/plain", b"hello");
    assert!((400..500).contains(&r.status), "{}", r.status);

    // DICOM and NIfTI uploads: the parity image as a DICOM whose window gives its grey levels
    // back, and as slice 1 of a 3-slice NIfTI volume (rows stored bottom up), segment as the PNG
    // does; a DICOM in a transfer syntax reclmis does not decode (JPEG 2000) is refused, named.
    use reclmis::data::image::read_grey;
    use reclmis::data::medical::write::{DicomImage, NiftiData, NiftiVolume};
    let grey_path = std::env::temp_dir().join(format!("reclmis-serve-{}.png", std::process::id()));
    std::fs::write(&grey_path, &image).unwrap();
    let grey = read_grey(&grey_path).unwrap();
    std::fs::remove_file(&grey_path).unwrap();
    let is_grey = {
        let bgr = reclmis::data::image::read_bgr_bytes(&name, &image, &Default::default()).unwrap();
        bgr.data.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2])
    };
    assert!(
        is_grey,
        "the parity image is grey, so its DICOM copy is exact"
    );
    let (h, w) = (grey.height, grey.width);
    let mut dicom = DicomImage::grey(
        h as u16,
        w as u16,
        grey.data.iter().map(|&g| u16::from(g)).collect(),
    );
    dicom.window = Some((127.5, 255.0));
    let dicom_bytes = dicom.to_bytes().unwrap();
    let mut slices = vec![0u8; 3 * h * w];
    for y in 0..h {
        // NIfTI rows run bottom up: stored row y is image row h-1-y.
        slices[h * w + y * w..h * w + (y + 1) * w]
            .copy_from_slice(&grey.data[(h - 1 - y) * w..(h - y) * w]);
    }
    let nifti_bytes = NiftiVolume {
        dims: vec![w as u16, h as u16, 3],
        data: NiftiData::U8(slices),
        scaling: (0.0, 0.0),
    }
    .to_bytes();
    for (file, bytes, slice) in [
        ("scan.dcm", &dicom_bytes, None),
        ("scan.nii", &nifti_bytes, Some(b"1".as_slice())),
    ] {
        let mut fields = vec![("image", Some(file), bytes.as_slice()), good[1]];
        fields.extend(slice.map(|s| ("slice", None, s)));
        let r = segment(addr, &fields);
        r.assert_ok(file);
        let got = floats(&r.json()["prob"]);
        assert_eq!(got.len(), S * S, "{file}");
        // The DICOM's window gives the grey levels back exactly; NIfTI has no window, so its
        // slice is stretched min–max (README "DICOM and NIfTI") and differs unless the image spans 0–255.
        if file.ends_with(".dcm") {
            let differ = got.iter().zip(&prob).filter(|(a, b)| a != b).count();
            assert_eq!(differ, 0, "{file} segments as the PNG does");
        }
    }
    let r = segment(
        addr,
        &[
            ("image", Some("scan.nii"), &nifti_bytes),
            good[1],
            ("slice", None, b"3"),
        ],
    );
    assert_eq!(r.status, 422, "{}", r.error());
    assert!(r.error().contains("scan.nii"), "{}", r.error());
    dicom.transfer_syntax = "1.2.840.10008.1.2.4.90".into();
    let jpeg2000 = dicom.to_bytes().unwrap();
    let r = segment(addr, &[("image", Some("jp2.dcm"), &jpeg2000), good[1]]);
    assert_eq!(r.status, 422, "{}", r.error());
    assert!(
        r.error().contains("jp2.dcm") && r.error().contains("1.2.840.10008.1.2.4.90"),
        "{}",
        r.error()
    );

    // Still serving, with the same answer.
    let again = segment(addr, &good).json();
    assert_eq!(floats(&again["prob"]), prob);
}

#[test]
fn a_burst_beyond_the_queue_gets_503_and_the_rest_are_answered() {
    let authors = parity_dir().join("best_model-RecLMIS.pth.tar");
    let server = Server::start(&authors, &["--workers", "1", "--queue", "1"]);
    let addr = server.addr;
    let (image, name, note) = parity_input();
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let (image, name, note) = (image.clone(), name.clone(), note.clone());
            std::thread::spawn(move || {
                let r = segment(
                    addr,
                    &[
                        ("image", Some(name.as_str()), image.as_slice()),
                        ("note", None, note.as_bytes()),
                    ],
                );
                (r.status, r.headers)
            })
        })
        .collect();
    let replies: Vec<(u16, String)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = replies.iter().filter(|(s, _)| *s == 200).count();
    let busy: Vec<_> = replies.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!(ok + busy.len(), 6, "{replies:?}");
    assert!(ok >= 1, "{replies:?}");
    assert!(
        busy.len() >= 3,
        "at most 2 fit (1 running, 1 waiting): {replies:?}"
    );
    assert!(
        busy.iter()
            .all(|(_, h)| h.to_ascii_lowercase().contains("retry-after: 1"))
    );
    // Nothing leaked: the slots are free again.
    let r = segment(
        addr,
        &[
            ("image", Some(name.as_str()), image.as_slice()),
            ("note", None, note.as_bytes()),
        ],
    );
    assert_eq!(r.status, 200);
}
