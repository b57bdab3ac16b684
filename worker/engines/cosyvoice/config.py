"""The CosyVoice-300M-SFT architecture as a `cosyvoice.yaml`, at full size or tiny.

The full size is the published 300M-SFT architecture (same classes, same dimensions, so the
saved state dicts have the published shapes); tiny keeps every class and the interfaces fixed by
the data (80 mel bins, 192-dim speaker embedding, whisper's 51866 text tokens, 4096 speech
tokens, 22050 Hz, 256 samples a mel frame) and shrinks only the widths and depths.
Only the inference keys are written: the published file also carries the training pipeline.
"""

from __future__ import annotations

from string import Template

# Widths and depths that differ between the sizes; every other number is fixed by the data.
SIZES: dict[str, dict[str, object]] = {
    "full": {
        "text_dim": 512,
        "llm_dim": 1024,
        "llm_heads": 16,
        "llm_units": 4096,
        "text_blocks": 6,
        "llm_blocks": 14,
        "flow_dim": 512,
        "flow_heads": 8,
        "flow_units": 2048,
        "flow_blocks": 6,
        "est_channels": "[256, 256]",
        "est_head_dim": 64,
        "est_blocks": 4,
        "est_mid_blocks": 12,
        "est_heads": 8,
        "hift_channels": 512,
    },
    "tiny": {
        "text_dim": 32,
        "llm_dim": 32,
        "llm_heads": 2,
        "llm_units": 64,
        "text_blocks": 1,
        "llm_blocks": 1,
        "flow_dim": 32,
        "flow_heads": 2,
        "flow_units": 64,
        "flow_blocks": 1,
        "est_channels": "[32]",
        "est_head_dim": 16,
        "est_blocks": 1,
        "est_mid_blocks": 1,
        "est_heads": 2,
        "hift_channels": 32,
    },
}

_TEMPLATE = Template("""\
# $banner
sample_rate: 22050
text_encoder_input_size: $text_dim
llm_input_size: $llm_dim
llm_output_size: $llm_dim
spk_embed_dim: 192

llm: !new:cosyvoice.llm.llm.TransformerLM
    text_encoder_input_size: !ref <text_encoder_input_size>
    llm_input_size: !ref <llm_input_size>
    llm_output_size: !ref <llm_output_size>
    text_token_size: 51866
    speech_token_size: 4096
    length_normalized_loss: True
    lsm_weight: 0
    spk_embed_dim: !ref <spk_embed_dim>
    text_encoder: !new:cosyvoice.transformer.encoder.ConformerEncoder
        input_size: !ref <text_encoder_input_size>
        output_size: $llm_dim
        attention_heads: $llm_heads
        linear_units: $llm_units
        num_blocks: $text_blocks
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        use_cnn_module: False
        macaron_style: False
        use_dynamic_chunk: False
        use_dynamic_left_chunk: False
        static_chunk_size: 1
    llm: !new:cosyvoice.transformer.encoder.TransformerEncoder
        input_size: !ref <llm_input_size>
        output_size: !ref <llm_output_size>
        attention_heads: $llm_heads
        linear_units: $llm_units
        num_blocks: $llm_blocks
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0
        input_layer: 'linear_legacy'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        static_chunk_size: 1
    sampling: !name:cosyvoice.utils.common.ras_sampling
        top_p: 0.8
        top_k: 25
        win_size: 10
        tau_r: 0.1

flow: !new:cosyvoice.flow.flow.MaskedDiffWithXvec
    input_size: $flow_dim
    output_size: 80
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: 4096
    input_frame_rate: 50
    only_mask_loss: True
    encoder: !new:cosyvoice.transformer.encoder.ConformerEncoder
        output_size: $flow_dim
        attention_heads: $flow_heads
        linear_units: $flow_units
        num_blocks: $flow_blocks
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        input_size: $flow_dim
        use_cnn_module: False
        macaron_style: False
    length_regulator: !new:cosyvoice.flow.length_regulator.InterpolateRegulator
        channels: 80
        sampling_ratios: [1, 1, 1, 1]
    decoder: !new:cosyvoice.flow.flow_matching.ConditionalCFM
        in_channels: 240
        n_spks: 1
        spk_emb_dim: 80
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 1e-06
                solver: 'euler'
                t_scheduler: 'cosine'
                training_cfg_rate: 0.2
                inference_cfg_rate: 0.7
                reg_loss_type: 'l1'
        estimator: !new:cosyvoice.flow.decoder.ConditionalDecoder
            in_channels: 320
            out_channels: 80
            channels: $est_channels
            dropout: 0
            attention_head_dim: $est_head_dim
            n_blocks: $est_blocks
            num_mid_blocks: $est_mid_blocks
            num_heads: $est_heads
            act_fn: 'gelu'

hift: !new:cosyvoice.hifigan.generator.HiFTGenerator
    in_channels: 80
    base_channels: $hift_channels
    nb_harmonics: 8
    sampling_rate: !ref <sample_rate>
    nsf_alpha: 0.1
    nsf_sigma: 0.003
    nsf_voiced_threshold: 10
    upsample_rates: [8, 8]
    upsample_kernel_sizes: [16, 16]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3, 7, 11]
    resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    source_resblock_kernel_sizes: [7, 11]
    source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5]]
    lrelu_slope: 0.1
    audio_limit: 0.99
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor
        num_class: 1
        in_channels: 80
        cond_channels: $hift_channels

get_tokenizer: !name:whisper.tokenizer.get_tokenizer
    multilingual: True
    num_languages: 100
    language: 'en'
    task: 'transcribe'
allowed_special: 'all'
feat_extractor: !name:matcha.utils.audio.mel_spectrogram
    n_fft: 1024
    num_mels: 80
    sampling_rate: !ref <sample_rate>
    hop_size: 256
    win_size: 1024
    fmin: 0
    fmax: 8000
    center: False
""")


def render_config(size: str, *, banner: str) -> str:
    """The `cosyvoice.yaml` text for `size` ("tiny" or "full"); `banner` is its first comment."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    return _TEMPLATE.substitute(SIZES[size], banner=banner)
