"""transformers' DETR tests that do not apply to hf_detr by design: deselected by conftest.py (they
are neither run nor counted), each with its reason. docs/transformers-tests.md lists them too
(`tests/test_repository.py` checks that the two lists agree)."""

MODELING = "models/detr/test_modeling_detr.py::DetrModelTest::"
IMAGE_PROCESSING = "models/detr/test_image_processing_detr.py::DetrImageProcessingTest::"

NOT_APPLICABLE: dict[str, str] = {
    MODELING + "test_different_timm_backbone": (
        "hf_detr builds timm ResNets only (the paper's backbones); the test swaps in a MobileNetV3 and "
        "reads transformers' own backbone wrapper (`conv_encoder`)."
    ),
    MODELING + "test_hf_backbone": (
        "downloads microsoft/resnet-18 as a transformers ResNet backbone; hf_detr builds timm ResNets and "
        "converts checkpoints with transformers' ResNet to them (hf-detr-convert)."
    ),
    MODELING + "test_forward_signature": (
        "hf_detr's forward takes no `decoder_attention_mask` and no precomputed `encoder_outputs`: every "
        "query attends (as the paper) and the encoder always runs on the image's features."
    ),
    MODELING + "test_load_contiguous_weights": (
        "the ResNet's weights are channels-last, fresh or loaded, as its activations: contiguous weights "
        "are reordered by every convolution call, which slows training (docs/notes.md)."
    ),
    MODELING + "test_model_weights_reload_no_missing_tied_weights": (
        "loading is strict: a checkpoint lacking weights is an error naming them, never a random "
        "initialisation (the test loads a file with no weights and expects a warning)."
    ),
    MODELING + "test_training": (
        "the mixin recognises base models by transformers' static class-name table (MODEL_MAPPING_NAMES), "
        "which lists DetrModel but not HfDetrModel, so it asks the base model for a loss; hf_detr's "
        "detector and segmentation models train in tests/test_training.py."
    ),
    IMAGE_PROCESSING + "test_post_process_test_mixin_inheritance": (
        "DETR's post_process_semantic_segmentation takes the class and mask logits of a DETR output, not "
        "the per-pixel `SemanticSegmenterOutput` the semantic-segmentation test mixin builds."
    ),
    IMAGE_PROCESSING + "test_processor_can_use_legacy_annotation_format": (
        "the test indexes the processor's 'torchvision' backend; hf_detr has one (PIL) backend. What it "
        "checks (the format as a string or an AnnotationFormat, kept by save/load) is tested in "
        "tests/test_image_processing_detr.py."
    ),
    IMAGE_PROCESSING + "test_should_raise_if_annotation_format_invalid": (
        "an unknown `format` is a ValueError when the processor is built, before any call (transformers "
        "raises at the first call)."
    ),
}
