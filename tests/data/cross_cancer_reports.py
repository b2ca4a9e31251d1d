"""Pathology reports written for the tests (no real patient): colorectal, lung and breast, in synoptic,
narrative and OCR-damaged styles. Each entry: (cancer, style, expected type rendering (regex), text)."""

REPORTS = [
    # ---- colorectal --------------------------------------------------------------------------------
    ("colorectal", "synoptic", r"^Adenocarcinoma",
     "SPECIMEN: Sigmoid colon, resection.\nHISTOLOGIC TYPE: Adenocarcinoma\nHISTOLOGIC GRADE: Low grade (well to "
     "moderately differentiated)\nTUMOR SIZE: 4.2 cm\nLYMPHOVASCULAR INVASION: Present\nPERINEURAL INVASION: Not identified\n"
     "TUMOR DEPOSITS: Not identified\npT3 pN1a"),
    ("colorectal", "synoptic", r"^Mucinous adenocarcinoma",
     "Procedure: Right hemicolectomy. Tumor site: Cecum. Histologic type: Mucinous adenocarcinoma (>50% extracellular "
     "mucin). Histologic grade: G2, moderately differentiated. Tumor extension: invades through muscularis propria into "
     "pericolorectal tissue. Lymphovascular invasion: not identified. Regional lymph nodes: 0/18."),
    ("colorectal", "narrative", r"^Signet-ring cell carcinoma",
     "Sections of the rectal mass show a poorly cohesive signet ring cell carcinoma infiltrating the full thickness of the "
     "bowel wall, with single cells containing intracytoplasmic mucin displacing the nuclei. Extensive lymphovascular "
     "invasion is present. Eleven of twenty lymph nodes contain metastatic carcinoma."),
    ("colorectal", "narrative", r"^Medullary carcinoma",
     "Right colon, hemicolectomy: medullary carcinoma, forming solid sheets of cells with vesicular nuclei and a prominent "
     "intratumoral lymphocytic infiltrate. Mismatch repair immunohistochemistry shows loss of MLH1 and PMS2. Margins "
     "are negative. No lymphovascular invasion is seen."),
    ("colorectal", "synoptic", r"^Serrated adenocarcinoma",
     "HISTOLOGIC TYPE: Serrated adenocarcinoma. GRADE: moderately differentiated. MARGINS: uninvolved. "
     "LYMPH NODES: 2/14 positive. TUMOR BUDDING: intermediate (BD2)."),
    ("colorectal", "ocr", r"^Adenocarcinoma",
     "COLON, SIGMOID. SEGMENTAL RESECTION: INVASIVE ADENO- CARCINOMA, MODERATELY. DIFFERENTIATED, EXTENDING INTO "
     "PERICOLONIC FAT. ANGIOLYMPHATIC INVASION: NOT IDENTIFIED. TWELVE LYMPH NODES. NEGATIVE FOR. METASTATIC CARCINOMA (0/12)."),
    ("colorectal", "ocr", r"^Adenocarcinoma",
     "DIAGNOSIS: RECTUM, LOW ANTERIOR RESECTION - ADENOCARCINOMA, MODERATELY DIFFERENTIATED. WITH MUCINOUS COMPONENT "
     "(30%). - TUMOR INVADES SUBSEROSA. - TREATMENT EFFECT: PRESENT, MODERATE RESPONSE (TRG 2) AFTER NEOADJUVANT "
     "CHEMORADIATION."),
    ("colorectal", "narrative", r"^Micropapillary adenocarcinoma",
     "The transverse colon resection contains a micropapillary adenocarcinoma composed of small tufts of cells within "
     "clear stromal spaces. It is poorly differentiated and shows extensive lymphovascular invasion. Four of sixteen "
     "lymph nodes are involved."),
    ("colorectal", "synoptic", r"^Adenosquamous carcinoma",
     "Tumor site: ascending colon | Histologic type: adenosquamous carcinoma | Histologic grade: high grade | "
     "Lymphovascular invasion: present | Margins: negative"),
    ("colorectal", "narrative", r"^Neuroendocrine carcinoma",
     "Colon, biopsy: high-grade neuroendocrine carcinoma, small cell type is not favoured; tumor cells are positive for "
     "synaptophysin and chromogranin, Ki-67 index 80%. Extensive necrosis is present."),
    ("colorectal", "ocr", r"^Mucinous adenocarcinoma",
     "FINAL DIAGNOSIS. COLON,. RIGHT: MUCINOUS. ADENOCARCINOMA, WELL DIFFERENTIATED, WITH ABUNDANT EXTRACELLULAR MUCIN "
     "POOLS. NO. LYMPHOVASCULAR INVASION IDENTIFIED. LYMPH NODES: 0/22."),
    # ---- lung --------------------------------------------------------------------------------------
    ("lung", "synoptic", r"^Acinar adenocarcinoma",
     "Procedure: Lobectomy, right upper lobe. Histologic type: Invasive adenocarcinoma, acinar predominant (60%), "
     "lepidic (30%), solid (10%). Visceral pleural invasion: not identified. Lymphovascular invasion: present. pT1c pN0."),
    ("lung", "synoptic", r"^Squamous cell carcinoma",
     "HISTOLOGIC TYPE: Squamous cell carcinoma, keratinizing\nHISTOLOGIC GRADE: G2, moderately differentiated\n"
     "TUMOR SIZE: 3.1 cm\nVISCERAL PLEURA: not invaded\nLYMPHOVASCULAR INVASION: not identified"),
    ("lung", "narrative", r"^Small cell carcinoma",
     "The bronchial biopsy shows sheets of small cells with scant cytoplasm, nuclear molding and finely granular "
     "chromatin, with extensive crush artefact and necrosis, consistent with small cell carcinoma. TTF-1 positive."),
    ("lung", "narrative", r"^Lepidic adenocarcinoma",
     "Left lower lobe wedge: lepidic predominant adenocarcinoma, 1.8 cm, with an invasive component of 0.8 cm "
     "(acinar). No lymphovascular or visceral pleural invasion is identified. Margins are free."),
    ("lung", "synoptic", r"^Invasive mucinous adenocarcinoma",
     "Histologic type: Invasive mucinous adenocarcinoma. Spread through air spaces: present. Margins: negative. "
     "Regional lymph nodes: 0/9 involved."),
    ("lung", "ocr", r"^Large cell neuroendocrine carcinoma",
     "LUNG, RIGHT MIDDLE LOBE, LOBECTOMY: LARGE CELL. NEUROENDOCRINE CARCINOMA. 4.5 CM. WITH EXTENSIVE. NECROSIS. "
     "VASCULAR INVASION: PRESENT. MARGINS FREE."),
    ("lung", "ocr", r"^Squamous cell carcinoma",
     "FINAL DIAGNOSIS: LUNG. LEFT UPPER LOBE: NON-SMALL CELL CARCINOMA, SQUAMOUS CELL CARCINOMA. POORLY DIFFERENTIATED. "
     "(SEE COMMENT). P40 POSITIVE, TTF-1 NEGATIVE."),
    ("lung", "narrative", r"^Carcinoid tumour",
     "The endobronchial lesion is a typical carcinoid tumor with organoid nests of uniform cells, no necrosis and "
     "1 mitosis per 2 mm2. Surgical margins are clear."),
    ("lung", "synoptic", r"^Solid adenocarcinoma",
     "Tumor: adenocarcinoma, solid predominant (70%), micropapillary (20%), acinar (10%) | Grade: poorly differentiated "
     "(IASLC grade 3) | Necrosis: present | LVI: present"),
    ("lung", "ocr", r"^Sarcomatoid carcinoma",
     "RIGHT LOWER LOBE: PLEOMORPHIC CARCINOMA (SARCOMATOID CARCINOMA) WITH. SPINDLE AND GIANT CELLS. 6.0 CM. "
     "NECROSIS PRESENT. PLEURA INVOLVED."),
    ("lung", "narrative", r"^Adenocarcinoma",
     "Core biopsy of the right lung mass: non-small cell carcinoma, favour adenocarcinoma (TTF-1 and napsin A "
     "positive, p40 negative). Tumour shows treatment effect after neoadjuvant chemotherapy with fibrosis."),
    # ---- breast ------------------------------------------------------------------------------------
    ("breast", "synoptic", r"^Invasive ductal carcinoma",
     "HISTOLOGIC TYPE: Invasive carcinoma of no special type (ductal). HISTOLOGIC GRADE: Nottingham grade 2 "
     "(tubules 3, pleomorphism 2, mitoses 1; total score 6/9). DCIS: present, cribriform type. LVI: not identified."),
    ("breast", "narrative", r"^Invasive lobular carcinoma",
     "Left breast, lumpectomy: invasive lobular carcinoma, classic type, Nottingham grade 2, 2.3 cm, with lobular "
     "carcinoma in situ. Margins are negative. No lymphovascular invasion."),
    ("breast", "ocr", r"^Invasive ductal carcinoma",
     "RIGHT BREAST. MASTECTOMY: INFILTRATING DUCTAL. CARCINOMA, SBR GRADE Il. WITH ASSOCIATED DUCTAL CARCINOMA IN "
     "SITU. NO. ANGIOLYMPHATIC INVASION."),
    ("breast", "narrative", r"^Invasive micropapillary carcinoma",
     "Invasive carcinoma of no special type with 70 % micropapillary features, Nottingham grade 3, with extensive "
     "lymphovascular invasion."),
    ("breast", "synoptic", r"^Mucinous carcinoma",
     "Histologic type: mucinous (colloid) carcinoma with abundant extracellular mucin pools. Nottingham grade 1. "
     "Margins: clear. Lymph nodes: 0/3."),
    ("breast", "narrative", r"^(?:Invasive )?ductal carcinoma",
     "Breast core biopsy: invasive ductal carcinoma with medullary features, grade 3, syncytial growth and a brisk "
     "lymphocytic infiltrate at the pushing border."),
    ("breast", "ocr", r"^Metaplastic carcinoma",
     "LEFT BREAST, EXCISION: METAPLASTIC. CARCINOMA, SPINDLE CELL TYPE, GRADE 3 (3+3+3). NECROSIS PRESENT. "
     "MARGINS CLOSE."),
    ("breast", "synoptic", r"^Invasive ductal carcinoma",
     "Histologic type: invasive ductal carcinoma | Treatment effect: present, residual cancer burden class II, after "
     "neoadjuvant chemotherapy | Grade: 3 | LVI: present"),
    ("breast", "narrative", r"^Tubular carcinoma",
     "Right breast, wide local excision: tubular carcinoma, 0.9 cm, Nottingham grade 1, with low-grade DCIS. "
     "Lymphovascular invasion is not seen."),
    ("breast", "ocr", r"^Invasive lobular carcinoma",
     "HISTOLOGIC TYPE: INVASIVE LOBULAR. CARCINOMA. PLEOMORPHIC VARIANT. NOTTINGHAM SCORE 7/9 (GRADE 2). "
     "LYMPH-VASCULAR INVASION: ABSENT."),
]
