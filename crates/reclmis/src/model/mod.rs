//! RecLMIS (docs §1): CNN encoder, text tower, Interactor, PLAM decoder, and the
//! training-only POI/WOI heads, conditioned masking and reconstructors.

pub mod config;
pub mod decoder;
pub mod encoder;
pub mod init;
pub mod interactor;
pub mod losses;
pub mod masking;
pub mod nn;
pub mod reconstructor;
pub mod text;
pub mod weights;

use burn::module::Module;
use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::{Device, Tensor, TensorData};

use crate::rng::SplitMix64;
pub use config::{ModelConfig, Parity, Preset, TextEncoderConfig};
use decoder::UpBlock;
use encoder::{ConvBatchNorm, DownBlock};
use init::Init;
use interactor::Interactor;
pub use masking::TokenMask;
use nn::{Conv1d, Conv2d, Mlp2, NEG_INF, dropout};
use reconstructor::DualTransformer;
use text::TextTower;
pub use text::TokenBatch;

/// The whole model. Field names are the authors' state-dict names (`weights.rs` maps the few
/// that Rust spells differently: `nConvs`, `pixModule`, `CTBN`, `0`/`2`).
#[derive(Module, Debug)]
pub struct RecLMIS {
    pub inc: ConvBatchNorm,
    pub interact: Interactor,
    pub down1: DownBlock,
    pub down2: DownBlock,
    pub down3: DownBlock,
    pub down4: DownBlock,
    pub up4: UpBlock,
    pub up3: UpBlock,
    pub up2: UpBlock,
    pub up1: UpBlock,
    pub outc: Conv2d,
    pub text_module4: Conv1d,
    pub clip: TextTower,
    pub mlp_woi: Mlp2,
    pub mlp_visual: Mlp2,
    pub rec_text_trans1: DualTransformer,
    pub rec_img_trans1: DualTransformer,
    /// The config the model was built from: every pass reads its sizes, parity setting, text
    /// tower kind and loss weights here, so callers never pass a config beside the model.
    #[module(skip)]
    pub cfg: ModelConfig,
}

/// What a forward pass runs beyond the segmentation path.
#[derive(Clone, Debug)]
pub enum Branches {
    /// Segmentation only (the inference path of §1.12).
    Segment,
    /// Also POI and WOI, to explain a prediction.
    Explain,
    /// Training: POI/WOI, masking (sampled with this seed), both reconstructors and CCL.
    Aux { seed: u64 },
    /// Training with the masks given (parity tests replay the authors' masks).
    AuxWithMasks { img: TokenMask, text: TokenMask },
}

/// Everything a forward pass computed, named as in the authors' code.
pub struct Outputs {
    /// Sigmoid probabilities `[B, 1, S, S]`.
    pub probs: Tensor<4>,
    /// `outc` output before the sigmoid.
    pub logits: Tensor<4>,
    /// Text tower output `[B, L, D]` (`text_feat_clip`).
    pub text_feat_clip: Tensor<3>,
    /// After `text_module4` `[B, L, D]`.
    pub text_feat: Tensor<3>,
    /// `x1, img_feat1..img_feat4`.
    pub enc: [Tensor<4>; 5],
    /// `V' = img_feat4_4rec [B, N, D]`.
    pub inter_img: Tensor<3>,
    /// Decoder stages `up4..up1`.
    pub up: [Tensor<4>; 4],
    pub explain: Option<Explain>,
    pub aux: Option<Aux>,
}

pub struct Explain {
    /// `T'' = text_feat4_4rec [B, L, D]`.
    pub inter_text: Tensor<3>,
    /// POI `[B, N]` and WOI `[B, L]` (0 at pads).
    pub poi: Tensor<2>,
    pub woi: Tensor<2>,
}

pub struct Aux {
    pub mask_img: TokenMask,
    pub mask_text: TokenMask,
    pub rec_img: Tensor<3>,
    pub rec_text: Tensor<3>,
    pub loss_ccl: Tensor<1>,
    pub loss_text_rec: Tensor<1>,
    pub loss_img_rec: Tensor<1>,
}

/// The weighted losses of one step (§3).
pub struct Losses {
    pub criterion: Tensor<1>,
    pub ccl: Option<Tensor<1>>,
    pub text_rec: Option<Tensor<1>>,
    pub img_rec: Option<Tensor<1>>,
    pub total: Tensor<1>,
}

impl RecLMIS {
    /// A freshly initialised model (PyTorch's default initialisers, seeded).
    pub fn new(cfg: &ModelConfig, seed: u64, device: &Device) -> Self {
        let init = &mut Init::new(seed, device);
        let b = cfg.base_channels;
        let d = cfg.d_model();
        Self {
            inc: ConvBatchNorm::new(3, b, init),
            interact: Interactor::new(8 * b, d, cfg.n_img_tokens(), cfg.interactor_heads, init),
            down1: DownBlock::new(b, 2 * b, init),
            down2: DownBlock::new(2 * b, 4 * b, init),
            down3: DownBlock::new(4 * b, 8 * b, init),
            down4: DownBlock::new(8 * b, 8 * b, init),
            up4: UpBlock::new(8 * b, d, 4 * b, init),
            up3: UpBlock::new(4 * b, 4 * b, 2 * b, init),
            up2: UpBlock::new(2 * b, 2 * b, b, init),
            up1: UpBlock::new(b, b, b, init),
            outc: Conv2d::new(b, 1, 1, true, init),
            text_module4: Conv1d::new(d, d, 3, init),
            clip: TextTower::new(&cfg.text_encoder, cfg.context, init),
            mlp_woi: Mlp2::new(d, d, 1, init),
            mlp_visual: Mlp2::new(d, d, 1, init),
            rec_text_trans1: DualTransformer::new(d, cfg.rec_heads, cfg.rec_layers, init),
            rec_img_trans1: DualTransformer::new(d, cfg.rec_heads, cfg.rec_layers, init),
            cfg: cfg.clone(),
        }
    }

    /// The config the model was built from.
    pub fn cfg(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn device(&self) -> Device {
        self.outc.weight.val().device()
    }

    /// The text tower's output for a batch of notes (`text_feat_clip [B, L, D]`). With a frozen
    /// tower this is a pure function of the tokens, so callers may cache it.
    pub fn encode_text(&self, tokens: &TokenBatch, train: bool) -> Tensor<3> {
        let cfg = &self.cfg;
        let out = self
            .clip
            .forward(tokens, train && !cfg.text_encoder.is_frozen());
        if cfg.text_encoder.is_frozen() {
            out.detach()
        } else {
            out
        }
    }

    /// The forward pass of §1.1. `images [B, 3, S, S]` (BGR/255), `text_feat_clip` from
    /// [`encode_text`](Self::encode_text), `tokens` for the text mask.
    pub fn forward(
        &self,
        images: Tensor<4>,
        text_feat_clip: Tensor<3>,
        tokens: &TokenBatch,
        branches: Branches,
        train: bool,
    ) -> Outputs {
        let cfg = &self.cfg;
        let device = images.device();
        let [bsz, _, _, _] = images.dims();
        let l = tokens.len;
        let text_mask = tokens.mask(&device); // [B, L]

        let text_feat = if cfg.text_free {
            text_feat_clip.clone()
        } else {
            self.text_module4.forward_tokens(text_feat_clip.clone()) // [B, L, D]
        };

        let x1 = self.inc.forward(images, train); // [B, b, S, S]
        let f1 = self.down1.forward(x1.clone(), train); // [B, 2b, S/2, S/2]
        let f2 = self.down2.forward(f1.clone(), train); // [B, 4b, S/4, S/4]
        let f3 = self.down3.forward(f2.clone(), train); // [B, 8b, S/8, S/8]
        let f4 = self.down4.forward(f3.clone(), train); // [B, 8b, g, g]

        if cfg.text_free {
            return self.forward_text_free([x1, f1, f2, f3, f4], text_feat_clip, text_feat, train);
        }
        let with_text = !matches!(branches, Branches::Segment);
        let (v1, t2) = self.interact.forward(
            f4.clone(),
            text_feat.clone(),
            cfg.dropout,
            train,
            with_text,
            (cfg.parity == Parity::Clean).then(|| text_mask.clone()),
        );
        // V' [B, N, D]

        let g = cfg.grid();
        let d = cfg.d_model();
        let map = v1.clone().swap_dims(1, 2).reshape([bsz, d, g, g]); // map[b,c,h,w] = V'[b, h·g+w, c]
        let (up, logits, probs) = self.decode(map, [&x1, &f1, &f2, &f3], train);

        let mut explain = None;
        let mut aux = None;
        if let Some(t2) = t2 {
            let a = dropout(v1.clone(), cfg.head_dropout, train);
            let poi = softmax(self.mlp_visual.forward(a).squeeze_dim::<2>(2), 1); // [B, N]
            let bt = dropout(t2.clone(), cfg.head_dropout, train);
            let s = self.mlp_woi.forward(bt).squeeze_dim::<2>(2); // [B, L]
            let s = s + text_mask
                .clone()
                .neg()
                .add_scalar(1.0)
                .mul_scalar(NEG_INF as f64);
            let woi = softmax(s, 1); // [B, L], exactly 0 at pads
            let masks = match branches {
                Branches::Segment | Branches::Explain => None,
                Branches::AuxWithMasks { img, text } => Some((img, text)),
                Branches::Aux { seed } => {
                    let lens: Vec<usize> = text_mask_lengths(tokens);
                    let poi_h = to_vec(&poi);
                    let woi_h = to_vec(&woi);
                    Some(masking::sample_masks(
                        &poi_h,
                        &woi_h,
                        cfg.n_img_tokens(),
                        l,
                        &lens,
                        cfg.n_img_masked(),
                        cfg.text_mask_rate,
                        &mut SplitMix64::new(seed),
                    ))
                }
            };
            if let Some((mask_img, mask_text)) = masks {
                aux = Some(self.aux_branch(
                    AuxInputs {
                        img_tokens: f4.clone().flatten::<3>(2, 3).swap_dims(1, 2), // [B, N, 8b]
                        text_feat: text_feat.clone(),
                        text_feat_clip: text_feat_clip.clone(),
                        v1: v1.clone(),
                        poi: poi.clone(),
                        woi: woi.clone(),
                        text_mask,
                    },
                    mask_img,
                    mask_text,
                    train,
                ));
            }
            explain = Some(Explain {
                inter_text: t2,
                poi,
                woi,
            });
        }

        Outputs {
            probs,
            logits,
            text_feat_clip,
            text_feat,
            enc: [x1, f1, f2, f3, f4],
            inter_img: v1,
            up,
            explain,
            aux,
        }
    }

    /// PLAM decoder and head from a bottleneck map `[B, D, g, g]` and the skips `x1, f1..f3`:
    /// stages `up4..up1`, logits, probabilities.
    fn decode(
        &self,
        bottleneck: Tensor<4>,
        skips: [&Tensor<4>; 4],
        train: bool,
    ) -> ([Tensor<4>; 4], Tensor<4>, Tensor<4>) {
        let [x1, f1, f2, f3] = skips;
        let u4 = self.up4.forward(bottleneck, f3.clone(), train);
        let u3 = self.up3.forward(u4.clone(), f2.clone(), train);
        let u2 = self.up2.forward(u3.clone(), f1.clone(), train);
        let u1 = self.up1.forward(u2.clone(), x1.clone(), train);
        let logits = self.outc.forward(u1.clone());
        let probs = sigmoid(logits.clone());
        ([u4, u3, u2, u1], logits, probs)
    }

    /// The text-free baseline: `img_feat4` is the bottleneck the decoder sees.
    fn forward_text_free(
        &self,
        enc: [Tensor<4>; 5],
        text_feat_clip: Tensor<3>,
        text_feat: Tensor<3>,
        train: bool,
    ) -> Outputs {
        let [x1, f1, f2, f3, f4] = enc;
        let (up, logits, probs) = self.decode(f4.clone(), [&x1, &f1, &f2, &f3], train);
        let inter_img = f4.clone().flatten::<3>(2, 3).swap_dims(1, 2);
        Outputs {
            probs,
            logits,
            text_feat_clip,
            text_feat,
            enc: [x1, f1, f2, f3, f4],
            inter_img,
            up,
            explain: None,
            aux: None,
        }
    }

    fn aux_branch(
        &self,
        x: AuxInputs,
        mask_img: TokenMask,
        mask_text: TokenMask,
        train: bool,
    ) -> Aux {
        let device = x.poi.device();
        let [b, n, _] = x.img_tokens.dims();
        let l = x.text_feat.dims()[1];
        let cfg = &self.cfg;
        let paper = cfg.parity == Parity::Paper;
        let keep = |m: &TokenMask, len: usize| {
            let v: Vec<f32> = m.flat_f32().iter().map(|x| 1.0 - x).collect();
            Tensor::<3>::from_data(TensorData::new(v, [b, len, 1]), &device)
        };
        let masked_text = x.text_feat.clone() * keep(&mask_text, l); // [B, L, D]
        let masked_img = x.img_tokens.clone() * keep(&mask_img, n); // [B, N, D]

        // Text from image, conditioned on POI; image from text, conditioned on WOI.
        let rec_text = self.rec_text_trans1.forward(
            x.img_tokens.clone(),
            masked_text,
            &x.poi,
            paper,
            cfg.dropout,
            train,
        );
        let rec_img = self.rec_img_trans1.forward(
            x.text_feat.clone(),
            masked_img,
            &x.woi,
            paper,
            cfg.dropout,
            train,
        );

        let text_target = x.text_feat_clip.detach();
        let loss_text_rec = if paper {
            // paper-parity: §7 #5 — the mean includes pad rows.
            losses::mse(rec_text.clone(), text_target, None)
        } else {
            losses::mse(rec_text.clone(), text_target, Some(x.text_mask.clone()))
        };
        // paper-parity: §7 #4 — the image target V' is not detached.
        let img_target = if paper { x.v1 } else { x.v1.detach() };
        let loss_img_rec = losses::mse(rec_img.clone(), img_target, None);
        let loss_text_rec = nan_to_zero(loss_text_rec);
        let loss_img_rec = nan_to_zero(loss_img_rec);

        let scale = self.clip.logit_scale.val().detach().exp();
        let loss_ccl = losses::ccl(
            x.text_feat,
            x.img_tokens,
            x.woi,
            x.poi,
            x.text_mask,
            scale,
            cfg.parity,
        );
        Aux {
            mask_img,
            mask_text,
            rec_img,
            rec_text,
            loss_ccl,
            loss_text_rec,
            loss_img_rec,
        }
    }

    /// `L = 5·L_crit + 0.2·L_ccl + L_text_rec + L_img_rec` (§3); `target [B, S, S]` in {0, 1}.
    pub fn losses(&self, out: &Outputs, target: Tensor<3>) -> Losses {
        let w = &self.cfg.loss_weights;
        let criterion = losses::criterion(out.probs.clone(), target);
        let mut total = criterion.clone().mul_scalar(w.criterion);
        let (mut ccl, mut text_rec, mut img_rec) = (None, None, None);
        if let Some(aux) = &out.aux {
            if w.ccl != 0.0 {
                total = total + aux.loss_ccl.clone().mul_scalar(w.ccl);
                ccl = Some(aux.loss_ccl.clone());
            }
            total = total
                + aux.loss_text_rec.clone().mul_scalar(w.text_rec)
                + aux.loss_img_rec.clone().mul_scalar(w.img_rec);
            text_rec = Some(aux.loss_text_rec.clone());
            img_rec = Some(aux.loss_img_rec.clone());
        }
        Losses {
            criterion,
            ccl,
            text_rec,
            img_rec,
            total,
        }
    }
}

struct AuxInputs {
    img_tokens: Tensor<3>,
    text_feat: Tensor<3>,
    text_feat_clip: Tensor<3>,
    v1: Tensor<3>,
    poi: Tensor<2>,
    woi: Tensor<2>,
    text_mask: Tensor<2>,
}

fn text_mask_lengths(tokens: &TokenBatch) -> Vec<usize> {
    tokens
        .ids
        .chunks(tokens.len)
        .map(|r| r.iter().filter(|&&i| i != 0).count())
        .collect()
}

/// Host copy of a float tensor.
pub fn to_vec<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.to_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("a float tensor converts to f32")
}

/// The authors' NaN guard on the reconstruction losses (§3): a NaN becomes a constant 0.
fn nan_to_zero(loss: Tensor<1>) -> Tensor<1> {
    if to_vec(&loss).iter().any(|v| v.is_nan()) {
        Tensor::zeros([1], &loss.device())
    } else {
        loss
    }
}
