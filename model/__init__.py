"""DenseNet121-CBAM, preprocessing and inference: pure, testable without a network or a PACS."""
