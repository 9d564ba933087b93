from partner.service import service

service.main()
